"""ICE's comparison of reducers (seed 002): fid_c and fid_r of NMF, PCA and k-means at several k.

Data: EfficientNet-Lite0 cut at ``layer="auto"``, the 112-px crops of the bundled sample photos (the whole
13 photos with ``quick``), target = the class the model predicts for 'chelsea'.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from conceptlens.bench import write_json
from conceptlens.explainer import ConceptExplainer
from conceptlens.io import models, samples
from conceptlens.io.crops import demo_set
from conceptlens.metrics.ice import evaluate
from conceptlens.report.table import Column, Table
from conceptlens.split.model_split import ModelSplit

__all__ = ["demo_activations", "fidelity_table", "run_benchmark", "COLUMNS"]

#: How the fidelity table is shown.
COLUMNS = (Column("method", "method", kind="str"), Column("k", "k", kind="str"),
           Column("fid_c", "fid_c", better="max"), Column("fid_r", "fid_r", better="min"),
           Column("reconstruction_error", "recon", better="min"), Column("fit_s", "fit s", digits=2))


def demo_activations(quick: bool = False) -> tuple[ModelSplit, torch.Tensor, torch.Tensor, int]:
    """``(split, x, A, target)`` for the demo data: EfficientNet-Lite0 at layer 'auto' on sample-photo crops.

    ``quick`` uses the whole photos only (13 images ``[13,3,224,224]``) instead of 112-px crops (117).
    """
    model = models.load("efficientnet_lite0")
    split = ModelSplit(model, "auto")
    photos = samples.sample_images(model.preset)
    with torch.no_grad():
        target = int(model(photos[:1]).argmax(1))
    x = photos if quick else demo_set(model.preset)[0]
    return split, x, split.g(x), target


def fidelity_table(
    split: Any, x: torch.Tensor, A: torch.Tensor, target: int, ks: tuple[int, ...] = (5, 10, 25),
    methods: tuple[str, ...] = ("nmf", "pca", "kmeans"), seed: int = 0,
) -> list[dict[str, Any]]:
    """fid_c, fid_r, accuracy, reconstruction error, sparsity and fit time per (method, k).

    ``x [N,3,H,W]`` the images and ``A = g(x) [N,h,w,C]`` their activations.
    """
    rows = []
    for method in methods:
        for k in ks:
            t0 = time.perf_counter()
            ex = ConceptExplainer(split, method=method, n_concepts=k, seed=seed).fit(x, target, A=A)
            fit_s = time.perf_counter() - t0
            m = evaluate(ex, x, A=A)
            rows.append({"method": method, "k": k, **{key: round(v, 4) for key, v in m.items()},
                         "fit_s": round(fit_s, 3)})
    return rows


def run_benchmark(quick: bool = False, out: Path | str = Path("bench/results")) -> dict[str, Any]:
    """Measure, print and write ``out/fidelity.json``; returns the payload."""
    split, x, A, target = demo_activations(quick)
    rows = fidelity_table(split, x, A, target, ks=(5, 10) if quick else (5, 10, 25))
    print(f"fidelity on {x.shape[0]} images, layer {split.layer}, target {split.preset.classes[target]!r}")
    print(Table(COLUMNS, rows).terminal())
    payload = {"n_images": int(x.shape[0]), "layer": split.layer, "target": target, "rows": rows}
    print(f"wrote {write_json(out, 'fidelity', payload)}")
    return payload
