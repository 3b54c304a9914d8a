"""GPU check (``make gpu-check``): every concept method fitted on the GPU gives the CPU's results.

For each registered method (``conceptlens.decompose.available()``) a ``ConceptExplainer`` is fitted on the
same seeded images twice, on the CPU and on ``--device``, with a small float64 CNN cut before a non-linear
rest of the network (so the importance samples Sobol designs and takes gradients through ``h``, and FACE /
EDDP use the head); the concept bank ``W [k,C]``, the codes ``U`` of the images, the importance ``[k]`` and
the explanation's logits must agree within ``--rtol`` (relative to each tensor's largest entry). Every
fitted tensor must live on the device asked for. float64 keeps both sides' rounding far below the tolerance.

Without a GPU (and without ``--device``) it prints that it was skipped and exits 0. ``--device cpu`` runs the
whole comparison CPU against CPU: a self-check of this script that the tests run.

Usage::

    python scripts/gpu_check.py                 # cuda when present, else skipped
    python scripts/gpu_check.py --device cpu    # self-check
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import conceptlens as cl
from conceptlens import decompose

# Methods whose fit is long at default settings: a few iterations are enough to compare the two devices.
_QUICK = {"eddp": {"max_iter": 60}, "face": {"max_iter": 60}, "craft": {"patch_size": 16, "stride": 16}}


class _Net(nn.Module):
    """conv-ReLU, conv-ReLU, GAP, linear: cut after the first ReLU, ``h`` is non-linear (Sobol samples)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.preset = cl.data.Preset(size=32, mean=(0.5,) * 3, std=(0.25,) * 3, classes=["a", "b", "c"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(a.mean((2, 3)))


def _fit(method: str, device: torch.device, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model = _Net().double().eval().to(device)
    split = cl.ModelSplit(model, "act1")
    ex = cl.ConceptExplainer(split, method=method, n_concepts=4, seed=0, method_params=_QUICK.get(method),
                             progress=False)
    ex.fit(x, target=0)
    e = ex.explain(x[:2])
    return {"W": ex.concepts_, "U": ex.decomposition_.encode(split.g(x)), "importance": ex.importance_,
            "logits": e.logits}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> int:
    """Run the check; the exit status is 0 when every method agrees (or the check was skipped)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="device to compare with the CPU (default: cuda if any)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="largest relative difference allowed")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    args = ap.parse_args(argv)
    if args.device is None:
        if not torch.cuda.is_available():
            print("gpu-check skipped: torch sees no CUDA GPU on this machine (run with --device cpu for the "
                  "self-check)")
            return 0
        args.device = "cuda"
    device = cl.models.resolve_device(args.device)
    methods = args.methods.split(",") if args.methods else decompose.available()
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu-check: {len(methods)} methods on {device} ({name}) against the CPU, rtol {args.rtol:g}")
    failed = []
    for method in methods:
        t0 = time.perf_counter()
        ref = _fit(method, torch.device("cpu"), x)
        t1 = time.perf_counter()
        got = _fit(method, device, x)
        t2 = time.perf_counter()
        wrong_device = [k for k, v in got.items() if v.device.type != device.type]
        diffs = {k: _relative(got[k], ref[k]) for k in ref}
        ok = not wrong_device and all(d <= args.rtol for d in diffs.values())
        failed += [] if ok else [method]
        numbers = " ".join(f"{k} {d:.1e}" for k, d in diffs.items())
        print(f"  {method:<8} {'ok  ' if ok else 'FAIL'} {numbers}"
              + f"  cpu {t1 - t0:.2f}s {device.type} {t2 - t1:.2f}s"
              + (f"  on the wrong device: {wrong_device}" if wrong_device else ""))
    print(f"gpu-check: {len(methods) - len(failed)}/{len(methods)} methods agree"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
