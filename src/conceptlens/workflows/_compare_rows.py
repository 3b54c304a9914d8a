"""The rows of :func:`conceptlens.workflows.compare.compare`: one compared method's numbers, or its error.

Notation as in :mod:`conceptlens.workflows.compare`: ``A = g(x) [N,h,w,C]``, ``c`` the target class,
``U`` a method's codes, ``Â = decode(U)``, ``h`` the head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from conceptlens.errors import TargetError
from conceptlens.explainer import ConceptExplainer
from conceptlens.split.model_split import ModelSplit
from conceptlens.workflows.columns import METRICS

__all__ = ["empty_row", "concept_metrics", "stability_of", "mask_row", "metrics_of", "error_text", "outcome"]

_NAN = float("nan")


def empty_row(method: str, k: int) -> dict[str, Any]:
    return {"method": method, "n_concepts": k, **{m: _NAN for m in METRICS}, "error": ""}


def concept_metrics(ex: ConceptExplainer, A: torch.Tensor, target: int, seed: int) -> dict[str, float]:
    """Every concept metric of a fitted explainer from one encoding of ``A``."""
    from conceptlens import metrics
    from conceptlens.importance.base import concept_directions
    from conceptlens.metrics.craft import c_deletion_curve, c_insertion_curve, c_mu_fidelity_raw

    d = ex.decomposition_
    h = ex.split.h
    with torch.no_grad():
        U = d.encode(A)
        A_hat = d.decode(U)
        F = h(A)
        Fh = h(A_hat)
    try:
        acc = metrics.reconstruction_accuracy(h, A, A_hat, target)
    except TargetError:  # no image is classified as the target: the number is undefined, not an error
        acc = _NAN
    D, offset = concept_directions(d)
    off = offset if bool(offset.any()) else None
    imp = ex.importance_
    mu = c_mu_fidelity_raw(U, D, h, target, imp, seed=seed, offset=off)
    ok = ~torch.isnan(mu)
    return {
        "fid_c": metrics.fid_c(F, Fh),
        "fid_r": metrics.fid_r(F[:, target], Fh[:, target]),
        "accuracy": acc,
        "reconstruction_error": metrics.reconstruction_error(A, A_hat),
        "c_insertion": float(c_insertion_curve(U, D, h, target, imp, offset=off)[0].mean()),
        "c_deletion": float(c_deletion_curve(U, D, h, target, imp, offset=off)[0].mean()),
        "c_mu_fidelity": float(mu[ok].mean()) if bool(ok.any()) else _NAN,
        "c_gini": metrics.c_gini(imp),
        "sparsity": metrics.sparsity(U),
    }


def stability_of(ex: ConceptExplainer, A: torch.Tensor) -> float:
    """FACE's stability of the method: banks refitted on 5 folds of the images (on positions of ``A``)."""
    from conceptlens import decompose
    from conceptlens.metrics.face import stability

    cls = decompose.get(ex.method)

    def fit(A_train: torch.Tensor) -> Any:
        # the explainer's own parameters: a crop-fitted method's crop sizes (``crop_params()``) only tell
        # the explainer how to cut its fit images, and fit() takes the rows it is given
        d = cls(n_concepts=ex.n_concepts, seed=ex.seed, **ex.method_params)
        if cls.uses_head:
            d.set_head(ex.split.h)
        return d.fit(A_train)

    return stability(fit, A, n_folds=min(5, int(A.shape[0])))


def mask_row(split: ModelSplit, x: torch.Tensor, target: int, seed: int, params: Mapping[str, Any],
              progress: bool | None) -> tuple[dict[str, float], Any]:
    from conceptlens.attribution.masks.explainer import MaskExplainer
    from conceptlens.metrics.pixels import pixel_deletion_auc, pixel_insertion_auc

    t0 = time.perf_counter()
    me = MaskExplainer(split.model, seed=seed, progress=progress, **dict(params))
    e = me.explain(x, target)
    seconds = time.perf_counter() - t0
    return {
        "accuracy": float(e.same_top1.double().mean()),
        "kept_area": float(e.kept_fraction.double().mean()),
        "pixel_deletion": float(pixel_deletion_auc(split.model, x, e.masks, e.target, seed=seed).mean()),
        "pixel_insertion": float(pixel_insertion_auc(split.model, x, e.masks, e.target, seed=seed).mean()),
        "seconds": seconds,
    }, e


def metrics_of(ex: Any, A: torch.Tensor, target: int, seed: int) -> Callable[[str], tuple[Any, float]]:
    """``name → (the metrics of ex, 0)`` for :func:`outcome` (``ex`` may be a fit's exception: passed on)."""
    return lambda _name: (ex if isinstance(ex, BaseException) else concept_metrics(ex, A, target, seed), 0.0)


def error_text(exc: BaseException) -> str:
    """``"Type: first line of the message"`` for a method's row."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def outcome(f: Callable[[str], tuple[Any, float]], name: str) -> tuple[Any, float]:
    """``f(name)``, or ``(the exception, nan)`` when it raised: one method's failure is its row's error."""
    try:
        return f(name)
    except Exception as exc:  # noqa: BLE001 - reported in the method's row
        return exc, math.nan
