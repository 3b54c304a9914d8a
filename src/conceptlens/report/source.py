"""The report's images, in one tensor or streamed from a source: what the page needs of all ``N`` images.

Notation: ``N`` images, ``k`` concepts, ``x [N,3,H,W]`` / ``A [N,h,w,C]`` as in
:mod:`conceptlens.report.html`, ``S`` the positions of the images the page shows (prototypes, local
explanations, CRAFT's maps): at most ``k · n_prototypes + n_local`` of them.

The page reads of every image only small things: its row of the explanation (scores, contributions,
residual, logit: ``[N, k]`` at most), the metrics and, for EDDP-like methods, the edit deltas ``[N, k]``.
From a source they are accumulated in **one** pass over the images, batch by batch
(:func:`conceptlens.stream.scan_source`); the pictures and maps of the shown images ``S`` are fetched
afterwards with :meth:`ImageSource.take <conceptlens.io.sources.ImageSource.take>` (no forward pass of the
other images, nothing of them kept). From a tensor the same fields are computed at once, so both give the
same page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from conceptlens.errors import ParameterError

__all__ = ["ReportImages", "from_tensor", "from_source"]

Deltas = tuple[np.ndarray, np.ndarray]


@dataclass
class ReportImages:
    """What the report needs of its ``N`` images, however they came.

    Attributes
    ----------
    names : list[str]
        ``N`` captions.
    explanation : LocalExplanation
        Of every image, without maps (``scores [N,k]``, ``contributions [N,k]``, ``residual [N]``, …).
    metrics : Mapping[str, Any]
        The header's numbers (:func:`conceptlens.metrics.evaluate`, or the caller's own).
    deltas : tuple or None
        ``(Δ [N,k], flips [k])`` of the "Concept edits" section (None when the section is off).
    fetch : Callable
        ``fetch(S [m]) -> (x [m,3,H,W], A [m,h,w,C])`` for the shown images only.
    """

    names: list[str]
    explanation: Any
    metrics: Mapping[str, Any]
    deltas: Deltas | None
    fetch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]

    @property
    def n(self) -> int:
        """``N``."""
        return int(self.explanation.scores.shape[0])


def _names(names: Sequence[str] | None, n: int, default: list[str] | None = None) -> list[str]:
    if names is None:
        return default if default is not None and len(default) == n else [f"image {i}" for i in range(n)]
    if isinstance(names, str) or len(names) != n:
        got = "a string" if isinstance(names, str) else f"{len(names)} names"
        raise ParameterError(f"names must be a list of {n} image names (one per image), got {got}")
    return [str(v) for v in names]


def from_tensor(ex: Any, x: torch.Tensor, A: torch.Tensor | None, names: Sequence[str] | None,
                metrics: Mapping[str, Any] | None, edits: bool) -> ReportImages:
    """The report's view of images held in one tensor ``x [N,3,H,W]`` (``A``: their ``g(x)``, or None)."""
    from conceptlens import metrics as metrics_mod
    from conceptlens.report.sections.edits import edit_deltas

    N = int(x.shape[0])
    names = _names(names, N)
    if A is None:
        A = ex.activations(x)
    elif A.shape[0] != N:
        raise ParameterError(f"A holds activations of {A.shape[0]} images but x has {N}; "
                             "pass g(x) of the same images")
    e = ex.explain(x, A=A, maps="none")  # maps [N,k,H,W] of every image could be GBs: only the shown ones

    def fetch(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(index, dtype=torch.long)
        return x[i.to(x.device)], A[i.to(A.device)]

    return ReportImages(names=names, explanation=e,
                        metrics=metrics if metrics is not None else metrics_mod.evaluate(ex, x, A=A),
                        deltas=edit_deltas(ex, A) if edits else None, fetch=fetch)


def from_source(ex: Any, data: Any, names: Sequence[str] | None, metrics: Mapping[str, Any] | None,
                edits: bool, options: Mapping[str, Any]) -> ReportImages:
    """The report's view of a source (files, folder, glob, Dataset, DataLoader…), read in one pass.

    ``options``: the streaming options of :func:`conceptlens.stream.explain_source` (``batch_size``,
    ``num_workers``, ``class_folder``, ``target_images``).
    """
    from conceptlens.report.sections.edits import edit_deltas
    from conceptlens.stream import MetricSums, concat_explanations, scan_source

    loader = getattr(data, "data", data)  # an ImageSource's own data
    if isinstance(getattr(loader, "sampler", None), torch.utils.data.RandomSampler):
        raise ParameterError("the report reads the DataLoader twice (all images, then the shown ones by "
                             "position), but it shuffles: build it with shuffle=False")
    parts: list[Any] = []
    sums = MetricSums(ex) if metrics is None else None
    dparts: list[Deltas] = []

    def visit(x: torch.Tensor, A: torch.Tensor) -> None:
        parts.append(ex.explain(x, A=A, maps="none"))
        if sums is not None:
            sums.add(A)
        if edits:
            dparts.append(edit_deltas(ex, A))

    src = scan_source(ex, data, visit, what="report", **options)
    e = concat_explanations(parts)
    paths = src.paths
    deltas = (np.concatenate([d for d, _ in dparts]), np.sum([f for _, f in dparts], axis=0)) \
        if edits else None

    def fetch(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xs = src.take(torch.as_tensor(index, dtype=torch.long))
        with torch.no_grad():
            return xs, ex.activations(xs)

    return ReportImages(names=_names(names, int(e.scores.shape[0]),
                                     None if paths is None else [str(p) for p in paths]),
                        explanation=e, metrics=sums.result() if sums is not None else dict(metrics or {}),
                        deltas=deltas, fetch=fetch)
