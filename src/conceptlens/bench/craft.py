"""CRAFT at the forward-pass floor: end to end and its extraction, against the bare forward pass and Xplique.

Data: EfficientNet-Lite0 cut at ``layer="auto"``, the 13 bundled sample photos (224 px), patch 64 (stride
0.8 × 64 = 51), ``k = 10``, target = the class the model predicts for 'chelsea' (``quick``: 2 photos, one
round, no peer). Timed in one process, interleaved, ``rounds`` times each (medians), with the load average:

* **extraction**: :func:`~conceptlens.io.crops.crop_activations` (crops cut, resized, ``g``, ``h`` for the
  crops' classes, spatial means) with the default grid (``border="auto"``: 16 crops per photo) and with the
  border-aligned crops (``border=True``: 25 per photo, the grid before ``"auto"``);
* **bare forward pass**: ``model(x)`` on the same crops, cut before the clock starts, in the split's batch
  size under ``torch.inference_mode``, the model as loaded (contiguous): the floor a user gets by calling
  the model. Throughput ratio = bare seconds / extraction seconds (≥ 0.9 is the target). Also the same
  crops channels-last in batches of 16 (the layout and batch the extraction uses on the CPU): the floor of
  the extraction's own settings;
* **CRAFT end to end**: ``ConceptExplainer(split, method="craft", n_concepts=10).fit(photos, target)`` with
  the default importance (the closed form: Lite0's head after the layer is GAP + linear) and with sampled
  Sobol indices (``exact=False``, 32 designs, as the peer samples);
* **Xplique** ``CraftTorch`` (when ``xplique`` is importable: the optional ``peers`` extra, never in CI):
  ``fit`` + ``estimate_importance(nb_design=32)`` on the same split (``g`` and ``h`` wrapped as modules that
  permute to and from the channels-first layout it expects), patch 64, CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from conceptlens.bench import write_json
from conceptlens.explainer import ConceptExplainer
from conceptlens.io import models, samples
from conceptlens.io.crops import CPU_CROP_BATCH, channels_last_model, crop_activations, crops, grid_size
from conceptlens.split.model_split import ModelSplit

__all__ = ["bare_forward_seconds", "xplique_craft", "run_benchmark"]

PATCH, K, N_DESIGNS = 64, 10, 32


def bare_forward_seconds(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> float:
    """Seconds of ``model(x)`` in ``batch_size`` batches under ``torch.inference_mode`` (``x [M,3,H,W]``)."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], batch_size):
            model(x[i : i + batch_size])
        return time.perf_counter() - t0


class _Permuted(torch.nn.Module):
    """A split's ``g`` or ``h`` as a module in the channels-first layout Xplique's ``CraftTorch`` expects."""

    def __init__(self, split: ModelSplit, part: str) -> None:
        super().__init__()
        self.split, self.part = split, part

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.part == "g":
            return self.split.g(t, progress=False).permute(0, 3, 1, 2)
        return self.split.h(t.permute(0, 2, 3, 1))


def xplique_craft(split: ModelSplit, x: torch.Tensor, target: int) -> Callable[[], Any] | None:
    """A call that runs Xplique's ``CraftTorch`` fit + importance on ``x``, or None without xplique."""
    try:
        from xplique.concepts import CraftTorch
    except ImportError:
        return None

    def run() -> Any:
        craft = CraftTorch(_Permuted(split, "g"), _Permuted(split, "h"), number_of_concepts=K,
                           batch_size=split.batch_size, patch_size=PATCH, device=str(x.device))
        craft.fit(x, class_id=target)
        return craft.estimate_importance(nb_design=N_DESIGNS)

    return run


def _timed(f: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def run_benchmark(quick: bool = False, out: Path | str = Path("bench/results")) -> dict[str, Any]:
    """Measure, print and write ``out/craft.json``; returns the payload."""
    model = models.load("efficientnet_lite0")
    split = ModelSplit(model, "auto")
    photos = samples.sample_images(model.preset)
    with torch.no_grad():
        target = int(model(photos[:1]).argmax(1))
    if quick:
        photos = photos[:2]
    rounds = 1 if quick else 3
    size = (int(photos.shape[-2]), int(photos.shape[-1]))
    bs = split.batch_size
    cut, _, _ = crops(photos, PATCH, out_size=size, border="auto")
    n_auto, n_border = grid_size(size, PATCH, border="auto"), grid_size(size, PATCH, border=True)
    peer = None if quick else xplique_craft(split, photos, target)

    def craft_fit(sampled: bool) -> ConceptExplainer:
        params = {"exact": False, "n_designs": N_DESIGNS, "n_boot": 0} if sampled else {}
        return ConceptExplainer(split, method="craft", n_concepts=K, seed=0, importance_params=params,
                                method_params={"patch_size": PATCH}).fit(photos, target)

    def bare_channels_last() -> float:
        with channels_last_model(split) as fmt:
            return bare_forward_seconds(model, cut.contiguous(memory_format=fmt), CPU_CROP_BATCH)

    stages: dict[str, Callable[[], Any]] = {
        "extraction": lambda: crop_activations(split, photos, PATCH),
        "bare_forward": lambda: bare_forward_seconds(model, cut, bs),
        "bare_forward_channels_last": bare_channels_last,
        "extraction_border": lambda: crop_activations(split, photos, PATCH, border=True),
        "craft": lambda: craft_fit(False),
        "craft_sampled": lambda: craft_fit(True),
    }
    if peer is not None:
        stages["xplique"] = peer
    times: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(rounds):  # interleaved, so that a change of load hits every stage
        for name, f in stages.items():
            times[name].append(f() if name.startswith("bare_forward") else _timed(f))
    med = {k: statistics.median(v) for k, v in times.items()}
    ex = craft_fit(False)
    n = photos.shape[0]
    throughput = med["bare_forward"] / med["extraction"]
    row: dict[str, Any] = {
        "n_images": n, "patch": PATCH, "k": K, "n_designs": N_DESIGNS, "batch_size": bs,
        "crops_per_image": n_auto, "crops_per_image_border": n_border, "n_crops": int(cut.shape[0]),
        **{f"{k}_s": round(v, 3) for k, v in med.items()},
        "extraction_throughput_vs_bare": round(throughput, 3),
        "extraction_throughput_vs_bare_channels_last": round(med["bare_forward_channels_last"]
                                                             / med["extraction"], 3),
        "extraction_s_per_crop": round(med["extraction"] / cut.shape[0], 4),
        "extraction_border_s_per_crop": round(med["extraction_border"] / (n * n_border), 4),
        "indices": [round(float(v), 4) for v in ex.importance_],
    }
    headline = [{"what": f"CRAFT crop extraction ({n_auto} crops per photo): throughput / bare batched "
                         "model(x) on the same crops",
                 "value": f"{throughput:.2f}× ({row['extraction_throughput_vs_bare_channels_last']:.2f}× "
                          "its channels-last batches of 16)", "target": "≥ 0.90×", "met": throughput >= 0.9}]
    print(f"CRAFT on {n} photos, patch {PATCH}, k={K}, layer {split.layer}: {n_auto} crops per photo "
          f"({n_border} with the border-aligned ones); medians of {rounds}")
    for k_, v in med.items():
        print(f"  {k_:<18} {v:8.2f} s")
    print(f"  extraction throughput / bare forward pass: {throughput:.2f}× (target ≥ 0.90×); / the same "
          f"channels-last, batches of 16: {row['extraction_throughput_vs_bare_channels_last']:.2f}×")
    if peer is not None:
        ratio, ratio_s = med["xplique"] / med["craft"], med["xplique"] / med["craft_sampled"]
        row.update({"xplique_over_craft": round(ratio, 3), "xplique_over_craft_sampled": round(ratio_s, 3)})
        headline.append({"what": "CRAFT end to end, Xplique CraftTorch / ours (same split, photos, patch, k)",
                         "value": f"{ratio:.2f}× ({ratio_s:.2f}× sampled Sobol)", "target": "≥ 2×",
                         "met": ratio >= 2.0})
        print(f"  Xplique / ours: {ratio:.2f}× (closed-form importance), {ratio_s:.2f}× (sampled Sobol)")
    else:
        row["xplique"] = "not importable (pip install -e '.[peers]')"
        print("  Xplique: not importable, no peer row (pip install -e '.[peers]')")
    payload = {"headline": headline, "layer": split.layer, "target": target, "rounds": rounds, "row": row,
               "all_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()}}
    print(f"wrote {write_json(out, 'craft', payload)}")
    return payload
