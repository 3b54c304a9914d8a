"""Benchmarks that report ratios and quality numbers measured in the same run, written as JSON.

``conceptlens bench fidelity``
    ICE's comparison of reducers (seed 002): fid_c and fid_r for NMF, PCA and k-means at k = 5, 10, 25
    on the demo data (EfficientNet-Lite0, crops of the sample photos, target = the class of 'chelsea').
``conceptlens bench nmf``
    Our NMF against scikit-learn's (cd and mu solvers) on the same matrix, same process.
``conceptlens bench face``
    FACE's λ sweep (MSE, KL, accuracy, C-Ins, C-Del, C-Gini, sparsity, stability) with ICE and CRAFT as the
    λ = 0 reference rows, on EfficientNet-Lite0 (demo crops) and on the ground-truth world (also writes
    ``face.md`` and ``face.png``).
``conceptlens bench groundtruth``
    The ground-truth leaderboard on the synthetic concept world.
``conceptlens bench masks``
    Minimal masks against occlusion and Grad-CAM at equal area on EfficientNet-Lite0 and the concept world
    (also writes ``masks.md``).

Every result is written to ``<out>/<name>.json`` (atomic) with the library versions and the machine's
thread count, and printed as a table.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["run", "fidelity_table", "demo_activations", "write_json", "BENCHES"]


def _env() -> dict[str, Any]:
    import conceptlens

    return {"conceptlens": conceptlens.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version()}


def write_json(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the environment) to ``out/name.json`` atomically; returns the path."""
    from conceptlens.explainer import _atomic_write

    payload = {"benchmark": name, "env": _env(), **payload}
    path = Path(out) / f"{name}.json"
    _atomic_write(path, (json.dumps(payload, indent=1) + "\n").encode())
    return path


def demo_activations(quick: bool = False) -> tuple[Any, torch.Tensor, torch.Tensor, int]:
    """``(split, x, A, target)`` for the demo data: EfficientNet-Lite0 at layer 'auto' on sample-photo crops.

    ``quick`` uses the whole photos only (13 images) instead of 112-px crops (117 images).
    """
    import conceptlens as cl

    model = cl.models.load("efficientnet_lite0")
    split = cl.ModelSplit(model, "auto")
    photos = cl.data.sample_images(model.preset)
    with torch.no_grad():
        target = int(model(photos[:1]).argmax(1))
    x = photos if quick else cl.data.demo_set(model.preset)[0]
    return split, x, split.g(x), target


def fidelity_table(
    split: Any, x: torch.Tensor, A: torch.Tensor, target: int, ks: tuple[int, ...] = (5, 10, 25),
    methods: tuple[str, ...] = ("nmf", "pca", "kmeans"), seed: int = 0,
) -> list[dict[str, Any]]:
    """fid_c, fid_r, accuracy, reconstruction error, sparsity and fit time per (method, k)."""
    import conceptlens as cl

    rows = []
    for method in methods:
        for k in ks:
            t0 = time.perf_counter()
            ex = cl.ConceptExplainer(split, method=method, n_concepts=k, seed=seed).fit(x, target, A=A)
            fit_s = time.perf_counter() - t0
            m = cl.metrics.evaluate(ex, x, A=A)
            rows.append({"method": method, "k": k, **{key: round(v, 4) for key, v in m.items()},
                         "fit_s": round(fit_s, 3)})
    return rows


def _bench_fidelity(quick: bool, out: Path) -> dict[str, Any]:
    split, x, A, target = demo_activations(quick)
    rows = fidelity_table(split, x, A, target, ks=(5, 10) if quick else (5, 10, 25))
    print(f"fidelity on {x.shape[0]} images, layer {split.layer}, target {split.preset.classes[target]!r}")
    print(f"{'method':<8}{'k':>4}{'fid_c':>8}{'fid_r':>8}{'recon':>8}{'fit s':>8}")
    for r in rows:
        print(f"{r['method']:<8}{r['k']:>4}{r['fid_c']:>8.3f}{r['fid_r']:>8.3f}{r['reconstruction_error']:>8.3f}"
              f"{r['fit_s']:>8.2f}")
    payload = {"n_images": int(x.shape[0]), "layer": split.layer, "target": target, "rows": rows}
    print(f"wrote {write_json(out, 'fidelity', payload)}")
    return payload


def _bench_nmf(quick: bool, out: Path) -> dict[str, Any]:
    from conceptlens.bench import nmf as bench_nmf

    return bench_nmf.run(quick=quick, out=out)


def _bench_groundtruth(quick: bool, out: Path) -> dict[str, Any]:
    try:
        from conceptlens.world import leaderboard as groundtruth
    except ImportError:  # the leaderboard module has not landed yet
        print("bench groundtruth: the ground-truth leaderboard is not part of this version yet; skipped")
        return {"skipped": "groundtruth leaderboard not available"}
    return groundtruth.run(quick=quick, out=out)


def _bench_face(quick: bool, out: Path) -> dict[str, Any]:
    from conceptlens.metrics.face import run_benchmark

    return run_benchmark(quick=quick, out=out)


def _bench_masks(quick: bool, out: Path) -> dict[str, Any]:
    from conceptlens.attribution.masks.explainer import run_benchmark

    return run_benchmark(quick=quick, out=out)


BENCHES: dict[str, Callable[[bool, Path], dict[str, Any]]] = {
    "fidelity": _bench_fidelity,
    "nmf": _bench_nmf,
    "groundtruth": _bench_groundtruth,
    "face": _bench_face,
    "masks": _bench_masks,
}


def run(what: str = "all", *, quick: bool = False, out: Path | str = Path("bench/results")) -> dict[str, Any]:
    """Run one benchmark by name (or ``"all"``); returns their payloads by name."""
    from conceptlens.errors import ParameterError

    out = Path(out)
    os.makedirs(out, exist_ok=True)
    names = list(BENCHES) if what == "all" else [what]
    for n in names:
        if n not in BENCHES:
            raise ParameterError(f"unknown benchmark {n!r}; choose one of {', '.join(BENCHES)} or 'all'")
    return {n: BENCHES[n](quick, out) for n in names}
