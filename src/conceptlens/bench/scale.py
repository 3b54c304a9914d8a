"""The pipeline at scale: ICE, CRAFT and FACE on N generated images, against the bare forward pass.

Data: ``N`` generated images (smooth random colour fields, 224 × 224, made on the fly by a DataLoader, so
no run holds them all; generated images are fine for timing, not for concepts), EfficientNet-Lite0 at
``layer="auto"`` (7 × 7 × 1280), target = the class the model predicts most often, ``k = 10``.

Each (method, N) runs in a fresh process (peak resident memory is a per-process high-water mark), which
measures, on the same images, in this order:

* ``forward_s``: the bare forward pass ``model(x)`` over the DataLoader (the peer);
* the explainer's streamed fit with ``memory_budget`` (default 64 MB: the activations of more than ~250
  images go to the on-disk store; FACE, which has no out-of-core fit, gets the default budget), split
  into ``extract_s`` (reading the images and running ``g`` and ``h`` once), ``crops_s`` (CRAFT: cutting
  and running the crops), ``fit_s`` (the bank) and ``encode_s`` (codes and importance);
* ``ratio`` = the whole pipeline over ``forward_s``; CRAFT needs ``1 + crops per image`` forward passes by
  design, so its ratio is also given per forward pass it makes (``ratio_per_pass``);
* ``peak_rss_mb``: ``resource.getrusage`` high-water mark of the process, ``base_rss_mb`` the same
  before the first image (model and libraries loaded, one warm-up image) and ``forward_peak_rss_mb`` after
  the bare forward pass (what batches of 32 images through the network take by themselves).

CRAFT runs 1 + 25 forward passes per image (64-px crops, stride 51, each resized to 224): it is measured
up to ``CRAFT_MAX_N`` images (100) outside ``quick``; its ``ratio_per_pass`` is what scales.

The numbers depend on the machine's load (written with the result): compare ratios, not seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conceptlens.bench import write_json

__all__ = ["run_benchmark", "measure", "COLUMNS"]

METHODS = ("nmf", "face", "craft")  # CRAFT, the slowest (26 passes per image), last
#: Parameters that keep a run within minutes on a laptop CPU (the same for every N).
PARAMS: dict[str, dict[str, Any]] = {"nmf": {"max_iter": 100}, "craft": {"max_iter": 100},
                                     "face": {"max_iter": 20}}
CRAFT_MAX_N = 100
COLUMNS = ("method", "n_images", "on_disk", "forward_s", "extract_s", "crops_s", "fit_s", "encode_s",
           "ratio", "ratio_per_pass", "peak_rss_mb", "forward_peak_rss_mb", "base_rss_mb")


def _images(n: int, size: int = 224, batch: int = 32) -> Any:
    """A DataLoader of ``n`` generated normalised images ``[≤ batch, 3, size, size]`` (seeded, lazy)."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Generated(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            g = torch.Generator().manual_seed(0)
            for i in range(0, n, batch):
                low = torch.rand(min(batch, n - i), 3, 7, 7, generator=g)
                x01 = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                                      align_corners=False).clamp(0, 1)
                mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
                yield (x01 - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    return DataLoader(Generated(), batch_size=None)


def measure(method: str, n: int, memory_budget: str = "64MB", threads: int | None = None) -> dict[str, Any]:
    """One (method, N) run in this process: the timings and memory the module docstring lists."""
    import resource

    import torch

    from conceptlens.explainer import ConceptExplainer
    from conceptlens.io import models
    from conceptlens.split.model_split import ModelSplit

    if threads:
        torch.set_num_threads(threads)
    model = models.load("efficientnet_lite0")
    split = ModelSplit(model, "auto", progress=False)
    with torch.no_grad():
        model(next(iter(_images(1))))  # warm-up: first-call allocations are no one's cost
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in _images(n):
            model(x)
    forward = time.perf_counter() - t0
    fwd_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ex = ConceptExplainer(split, method, 10, seed=0, method_params=PARAMS[method], progress=False)
    t0 = time.perf_counter()
    ex.fit(_images(n), batch_size=32, memory_budget=memory_budget or None)
    total = time.perf_counter() - t0
    s = ex.stream_
    passes = 1.0
    if ex.crops_ is not None:
        passes += len(ex.crops_) / n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "n_images": n, "on_disk": s["on_disk"], "forward_s": round(forward, 2),
            "extract_s": s["extract"], "crops_s": s["crops"], "fit_s": s["fit"], "encode_s": s["encode"],
            "total_s": round(total, 2), "ratio": round(total / forward, 2),
            "ratio_per_pass": round(total / forward / passes, 2),
            "forward_passes_per_image": round(passes, 2),
            "peak_rss_mb": round(peak / 1024), "base_rss_mb": round(base / 1024),
            "forward_peak_rss_mb": round(fwd_peak / 1024),
            "memory_budget": memory_budget or "default (RAM/4)"}


def _child(method: str, n: int, budget: str, threads: int | None) -> dict[str, Any]:
    code = ("import json, sys; from conceptlens.bench.scale import measure; "
            f"print('RESULT ' + json.dumps(measure({method!r}, {n}, {budget!r}, {threads!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"bench scale: {method} at N={n} failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


def run_benchmark(quick: bool = False, out: Path | str = Path("bench/results"), *,
                  sizes: tuple[int, ...] | None = None, methods: tuple[str, ...] = METHODS,
                  memory_budget: str = "64MB", threads: int | None = None) -> dict[str, Any]:
    """Measure every (method, N) in a fresh process, print a table, write ``out/scale.json``."""
    sizes = sizes or ((16, 48) if quick else (100, 1000))
    rows: list[dict[str, Any]] = []
    payload = {"model": "efficientnet_lite0", "layer": "auto", "n_concepts": 10,
               "images": "generated 224x224", "params": PARAMS, "rows": rows}
    for m in methods:
        for n in sizes:
            if m == "craft" and not quick and n > CRAFT_MAX_N:
                continue
            # FACE has no out-of-core fit (it refuses above the budget): it runs with the default budget
            budget = "" if m == "face" else ("1MB" if quick else memory_budget)
            rows.append(_child(m, n, budget, threads))
            print("  ".join(f"{c}={rows[-1][c]}" for c in COLUMNS), flush=True)
            path = write_json(out, "scale", payload)  # after every row: a long run keeps what it measured
    print(f"wrote {path}")
    return payload
