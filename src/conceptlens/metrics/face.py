"""FACE's faithfulness and complexity metrics (definitions of the authors' code), and a λ sweep.

Notation: ``h`` the head (``[B, *S, C] → [B, K]`` logits), ``A [N, *S, C]`` activations of ``N`` images,
``U [N, *S, k]`` concept coefficients, ``W [k, C]`` the bank, ``c`` the target class, ``imp [k]`` a
global concept importance (FACE ranks concepts once, by Sobol total indices). Accuracies are top-1
fractions over "the class's images": by default the images that ``h(A)`` classifies as ``c``.

* **accuracy** on reconstructed activations: ``argmax h(Â) == argmax h(A)``.
* **C-Del** (AOPC, *higher* is better; not the holistic C-Deletion of CRAFT, where lower is better):
  zero the top-``i`` concepts for ``i = 0..k``, ``acc_i`` = accuracy of ``h(U_i W)`` on the class;
  ``C-Del = Σ_{i=0..k} (acc_0 − acc_i) / (k + 2)``.
* **C-Ins**: start from ``U = 0`` (``i = 0``, the head sees zero activations) and restore the top-``i``
  concepts, ``i = 1..k``; ``C-Ins = trapz(acc_i, i) / k ∈ [0, 1]``.
* **C-Gini** of ``|imp|`` sorted ascending: ``G = Σ_i (2i − n − 1) s_(i) / (n Σ s)`` (0 = uniform,
  ``(n−1)/n`` = one concept carries everything).
* **sparsity**: mean over rows of ``U`` of the fraction of non-zero coefficients (lower = sparser).
* **stability**: split the images in ``n_folds`` folds (seed 42), fit a bank on each training split,
  L2-normalise its rows, match each pair of banks by the Hungarian method on ``1 − cosine`` and average
  the matched cosines, then average over the pairs.

All functions take tensors and call ``h`` in batches of whole images, without autograd.

The λ sweep (the paper's tables): :func:`face_sweep` fits FACE at each ``λ`` plus ICE (plain NMF) and CRAFT
(NMF on crops) as ``λ = 0`` reference rows and measures all of them the same way; its
:class:`SweepResult` prints the table, checks the seed's claim (:meth:`SweepResult.claim`), writes
CSV/JSON/PNG and becomes a report section (:func:`sweep_section`). :func:`real_sweep_data` and
:func:`world_sweep_data` prepare the two standard data sets (EfficientNet-Lite0 on the demo crops, the
ground-truth concept world) for ``conceptlens sweep`` and ``conceptlens bench face`` (:func:`run_benchmark`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from conceptlens.errors import ParameterError, TargetError

__all__ = [
    "predictions",
    "correctly_classified",
    "reconstruction_accuracy",
    "deletion_curve",
    "insertion_curve",
    "c_del",
    "c_ins",
    "c_gini",
    "sparsity",
    "matched_cosine",
    "stability",
    "sweep",
    "format_table",
    "face_sweep",
    "parse_kl_weights",
    "SweepResult",
    "SweepData",
    "SWEEP_COLUMNS",
    "REFERENCES",
    "sweep_figure",
    "sweep_section",
    "real_sweep_data",
    "world_sweep_data",
    "run_sweep",
    "run_benchmark",
]

Head = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ParameterError(f"{name} must be a positive integer, got {v!r}")
    return v


def predictions(h: Head, A: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """Top-1 class of every image: ``argmax h(A)`` ``[N]`` (long), ``batch_size`` images per call.

    Parameters
    ----------
    h : callable
        ``[B, *S, C] → [B, K]``.
    A : Tensor ``[N, *S, C]``
    batch_size : int

    Returns
    -------
    Tensor ``[N]`` long
    """
    _positive("batch_size", batch_size)
    out = []
    with torch.no_grad():
        for i in range(0, A.shape[0], batch_size):
            out.append(h(A[i : i + batch_size]).argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=A.device)


def correctly_classified(h: Head, A: torch.Tensor, target: int, *, batch_size: int = 64) -> torch.Tensor:
    """Indices ``[m]`` of the images that ``h(A)`` classifies as ``target`` (FACE's evaluation set)."""
    return torch.nonzero(predictions(h, A, batch_size=batch_size) == int(target)).flatten()


def _images(images: torch.Tensor | Sequence[int] | None, N: int, device: torch.device) -> torch.Tensor:
    if images is None:
        return torch.arange(N, device=device)
    idx = torch.as_tensor(images, device=device)
    if idx.dtype == torch.bool:
        if idx.numel() != N:
            raise ParameterError(f"a boolean images mask must have N={N} entries, got {idx.numel()}")
        idx = torch.nonzero(idx).flatten()
    idx = idx.long().flatten()
    if idx.numel() == 0:
        raise TargetError(
            "no images to evaluate on: none is classified as the target class; choose images of that "
            "class or another target"
        )
    if int(idx.min()) < -N or int(idx.max()) >= N:
        raise ParameterError(f"image indices must be in [0, {N}), got {int(idx.min())}..{int(idx.max())}")
    return idx


# ------------------------------------------------------------------------------------------------
# faithfulness
# ------------------------------------------------------------------------------------------------
def reconstruction_accuracy(
    h: Head,
    A: torch.Tensor,
    A_hat: torch.Tensor,
    target: int | None = None,
    *,
    batch_size: int = 64,
) -> float:
    """Top-1 accuracy of ``h(Â)`` against ``h(A)``.

    Parameters
    ----------
    h : callable
        ``[B, *S, C] → [B, K]``.
    A, A_hat : Tensor ``[N, *S, C]``
        Activations and their reconstruction ``U W``.
    target : int or None
        ``None``: fraction of all images whose top-1 class is unchanged. An int ``c``: FACE's number,
        the fraction of the images classified as ``c`` by ``h(A)`` that ``h(Â)`` still classifies as ``c``.
    batch_size : int
        Images per call of ``h``.

    Returns
    -------
    float in [0, 1]
    """
    if A.shape != A_hat.shape:
        raise ParameterError(
            f"A and A_hat must have the same shape, got {list(A.shape)} and {list(A_hat.shape)}"
        )
    p = predictions(h, A, batch_size=batch_size)
    q = predictions(h, A_hat, batch_size=batch_size)
    if target is None:
        return float((p == q).double().mean())
    sel = p == int(target)
    if not bool(sel.any()):
        raise TargetError(f"no image is classified as class {target} by h(A); choose images of that class")
    return float((q[sel] == int(target)).double().mean())


def _curve(
    h: Head,
    U: torch.Tensor,
    W: torch.Tensor,
    importance: torch.Tensor,
    target: int,
    insert: bool,
    images: torch.Tensor | Sequence[int] | None,
    batch_size: int,
) -> torch.Tensor:
    k = U.shape[-1]
    if W.ndim != 2 or W.shape[0] != k:
        raise ParameterError(f"W must be [k, C] with k={k} (U's last axis), got {list(W.shape)}")
    imp = torch.as_tensor(importance, dtype=torch.float64).flatten()
    if imp.numel() != k:
        raise ParameterError(f"importance must have k={k} entries, got {imp.numel()}")
    _positive("batch_size", batch_size)
    idx = _images(images, U.shape[0], U.device)
    order = torch.argsort(imp, descending=True, stable=True)
    rank = torch.empty(k, dtype=torch.long)
    rank[order] = torch.arange(k)
    steps = torch.arange(k + 1)[:, None]
    # Row i of `keep` says which concepts survive step i: the top-i are removed (deletion) or are the
    # only ones present (insertion).
    keep = (rank[None, :] < steps) if insert else (rank[None, :] >= steps)
    keep = keep.to(device=U.device, dtype=U.dtype).reshape(k + 1, 1, *([1] * (U.ndim - 2)), k)
    hits = torch.zeros(k + 1, dtype=torch.float64)
    per_call = max(1, batch_size // (k + 1))  # images per call, each expanded to k + 1 variants
    Wd = W.to(U.dtype)
    with torch.no_grad():
        for i in range(0, idx.numel(), per_call):
            Ub = U[idx[i : i + per_call]]
            B = Ub.shape[0]
            Um = (Ub.unsqueeze(0) * keep).reshape(-1, *Ub.shape[1:])
            pred = h(Um @ Wd).argmax(1).reshape(k + 1, B)
            hits += (pred == int(target)).sum(1).double().cpu()
    return hits / idx.numel()


def deletion_curve(
    h: Head,
    U: torch.Tensor,
    W: torch.Tensor,
    importance: torch.Tensor,
    target: int,
    *,
    images: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Accuracy ``acc_i`` (class ``target``) after zeroing the ``i`` most important concepts, ``i = 0..k``.

    Parameters
    ----------
    h : callable
        ``[B, *S, C] → [B, K]``.
    U : Tensor ``[N, *S, k]``
    W : Tensor ``[k, C]``
    importance : Tensor ``[k]``
        Global importance; concepts are removed in decreasing order (ties: lower index first).
    target : int
        Class ``c``.
    images : index tensor ``[m]``, boolean mask ``[N]`` or None
        Images to evaluate on (FACE: the class's correctly classified images, see
        :func:`correctly_classified`); None = all.
    batch_size : int
        Rows per call of ``h`` (``(k + 1)`` variants of ``batch_size // (k + 1)`` images).

    Returns
    -------
    Tensor ``[k + 1]`` float64, ``acc_0 … acc_k``
    """
    return _curve(h, U, W, importance, target, False, images, batch_size)


def insertion_curve(
    h: Head,
    U: torch.Tensor,
    W: torch.Tensor,
    importance: torch.Tensor,
    target: int,
    *,
    images: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Accuracy ``acc_i`` with only the ``i`` most important concepts present, ``i = 0..k`` (``acc_0``: U=0).

    Parameters and returns as in :func:`deletion_curve`.
    """
    return _curve(h, U, W, importance, target, True, images, batch_size)


def c_del(
    h: Head,
    U: torch.Tensor,
    W: torch.Tensor,
    importance: torch.Tensor,
    target: int,
    *,
    images: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 64,
) -> float:
    """FACE's C-Del (AOPC): ``Σ_{i=0..k} (acc_0 − acc_i) / (k + 2)``; higher = the ranking is more faithful.

    Parameters as in :func:`deletion_curve`. Returns a float in ``[0, (k+1)/(k+2))``.
    """
    acc = deletion_curve(h, U, W, importance, target, images=images, batch_size=batch_size)
    k = acc.numel() - 1
    return float((acc[0] - acc).sum() / (k + 2))


def c_ins(
    h: Head,
    U: torch.Tensor,
    W: torch.Tensor,
    importance: torch.Tensor,
    target: int,
    *,
    images: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 64,
) -> float:
    """FACE's C-Ins: ``trapz(acc_i, i) / k`` over ``i = 0..k`` (``acc_0``: U = 0); in [0, 1], higher = better.

    Parameters as in :func:`deletion_curve`.
    """
    acc = insertion_curve(h, U, W, importance, target, images=images, batch_size=batch_size)
    k = acc.numel() - 1
    return float(torch.trapezoid(acc) / k)


# ------------------------------------------------------------------------------------------------
# complexity and stability
# ------------------------------------------------------------------------------------------------
def c_gini(importance: torch.Tensor) -> float:
    """Gini index of ``|importance| [k]``: ``Σ_i (2i − n − 1) s_(i) / (n Σ s)``, ``s`` sorted ascending.

    0 for a constant vector (and for all zeros), ``(n − 1)/n`` for a one-hot vector; higher = the
    importance is concentrated on fewer concepts.
    """
    s = torch.as_tensor(importance, dtype=torch.float64).flatten().abs()
    if s.numel() == 0:
        raise ParameterError("importance is empty")
    if not bool(torch.isfinite(s).all()):
        raise ParameterError("importance contains NaN/Inf")
    s = torch.sort(s).values
    n, total = s.numel(), float(s.sum())
    if total == 0.0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * s).sum() / (n * total))


def sparsity(U: torch.Tensor, tol: float = 0.0) -> float:
    """Mean over rows of ``U [..., k]`` of the fraction of coefficients with ``|u| > tol`` (lower = sparser).

    With ``tol = 0`` this is FACE's definition (exact non-zeros); every row has ``k`` entries, so it
    equals the overall fraction of non-zeros.
    """
    if U.numel() == 0:
        raise ParameterError("U is empty")
    return float((U.abs() > tol).double().mean())


def matched_cosine(W1: torch.Tensor, W2: torch.Tensor) -> float:
    """Mean cosine of two banks ``[k1, C]``, ``[k2, C]`` after Hungarian matching of their rows (on 1 − cos).

    Rows are L2-normalised first (zero rows stay zero); ``min(k1, k2)`` pairs are matched.
    """
    from scipy.optimize import linear_sum_assignment

    if W1.ndim != 2 or W2.ndim != 2 or W1.shape[1] != W2.shape[1]:
        raise ParameterError(
            f"banks must be [k, C] with the same C, got {list(W1.shape)} and {list(W2.shape)}"
        )
    a = torch.nn.functional.normalize(W1.detach().to(torch.float64), dim=1)
    b = torch.nn.functional.normalize(W2.detach().to(torch.float64), dim=1)
    sim = (a @ b.T).cpu()
    r, c = linear_sum_assignment((1.0 - sim).numpy())
    return float(sim[torch.as_tensor(r), torch.as_tensor(c)].mean())


def stability(
    fit_fn: Callable[[torch.Tensor], Any],
    A: torch.Tensor,
    n_folds: int = 5,
    seed: int = 42,
) -> float:
    """FACE's stability: mean Hungarian-matched cosine between banks fitted on ``n_folds`` training splits.

    Parameters
    ----------
    fit_fn : callable
        ``A_train [M, *S, C] → W [k, C]`` (a tensor, or a fitted object with ``components_``).
    A : Tensor ``[N, *S, C]``
        Activations; the folds split the images (first axis).
    n_folds : int
        Number of folds (≥ 2); the training split of fold ``f`` is every image not in ``f``.
    seed : int
        Seed of the shuffle (a local ``torch.Generator``); FACE uses 42.

    Returns
    -------
    float
        Mean over the ``n_folds·(n_folds−1)/2`` pairs of :func:`matched_cosine`; 1 = identical banks.
    """
    N = A.shape[0]
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= N:
        raise ParameterError(f"n_folds must be an integer in [2, N={N}], got {n_folds!r}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(N, generator=gen).to(A.device)
    # Fold sizes as scikit-learn's KFold: the first N mod n_folds folds get one extra image.
    sizes = [N // n_folds + (1 if f < N % n_folds else 0) for f in range(n_folds)]
    banks = []
    start = 0
    for size in sizes:
        train = torch.cat([perm[:start], perm[start + size :]])
        start += size
        out = fit_fn(A[train])
        W = getattr(out, "components_", out)
        if not isinstance(W, torch.Tensor):
            raise ParameterError("fit_fn must return the bank W [k, C] (a tensor) or a fitted decomposition")
        banks.append(W)
    sims = [matched_cosine(banks[i], banks[j]) for i in range(n_folds) for j in range(i + 1, n_folds)]
    return float(sum(sims) / len(sims))


# ------------------------------------------------------------------------------------------------
# the λ sweep
# ------------------------------------------------------------------------------------------------
#: The columns of a sweep row, in table order (CSV, JSON, markdown).
SWEEP_COLUMNS: tuple[str, ...] = (
    "method",
    "kl_weight",
    "mse",
    "kl",
    "total",
    "accuracy",
    "accuracy_encoded",
    "agreement",
    "c_ins",
    "c_del",
    "c_gini",
    "sparsity",
    "stability",
    "seconds",
    "n_iter",
    "n_images",
)
#: The λ = 0 reference methods of the paper's tables: ICE (plain NMF on every position) and CRAFT
#: (NMF on one spatially averaged row per crop, codes per position by NNLS).
REFERENCES: tuple[str, ...] = ("ice", "craft")
_LABELS = {"face": "FACE", "ice": "ICE", "craft": "CRAFT"}
#: Faithfulness numbers the seed claims the KL term improves, and what else it must not hurt much.
_GAINS = ("accuracy", "c_ins", "c_del")


def _target_list(target: int | Sequence[int]) -> list[int]:
    try:
        targets = [operator.index(target)]  # type: ignore[arg-type]
    except TypeError:
        try:
            targets = [operator.index(t) for t in target]  # type: ignore[union-attr]
        except TypeError as e:
            raise TargetError(f"target must be a class index or a list of them, got {target!r}") from e
    if not targets:
        raise TargetError("no target class given; pass a class index or a list of them")
    return targets


def parse_kl_weights(kl_weights: str | Sequence[float]) -> tuple[float, ...]:
    """Validate ``λ`` values: a comma-separated string (``"0,1e-5,1e-3"``) or numbers; each finite ``≥ 0``.

    Returns
    -------
    tuple of float
        In the order given; duplicates removed (first kept).

    Raises
    ------
    ParameterError
        Empty, not a number, negative, NaN or infinite.
    """
    items: list[Any]
    if isinstance(kl_weights, str):
        items = [t.strip() for t in kl_weights.split(",") if t.strip()]
    else:
        items = list(kl_weights)
    if not items:
        raise ParameterError("no KL weight given: pass λ values, e.g. --kl-weights 0,1e-5,1e-3,1e-1,10")
    out: list[float] = []
    for t in items:
        try:
            v = float(t) if not isinstance(t, bool) else math.nan
        except (TypeError, ValueError):
            raise ParameterError(
                f"KL weight {t!r} is not a number; give comma-separated numbers ≥ 0, e.g. 0,1e-5,1e-3"
            ) from None
        if not math.isfinite(v) or v < 0:
            raise ParameterError(f"KL weight {t!r} must be a finite number ≥ 0 (λ = 0 is plain NMF)")
        if v not in out:
            out.append(v)
    return tuple(out)


def _measure(
    head: Head,
    A: torch.Tensor,
    U: torch.Tensor,
    W: torch.Tensor,
    U_enc: torch.Tensor,
    sels: dict[int, torch.Tensor],
    seed: int,
    n_designs: int,
    batch_size: int,
) -> dict[str, float]:
    """FACE's numbers for one factorisation ``A ≈ U W`` (class-dependent ones averaged over ``sels``)."""
    from conceptlens.importance.sobol import concept_total_indices

    with torch.no_grad():
        A_hat = U @ W
        A_enc = U_enc @ W
    per_class = []
    for c, sel in sels.items():
        imp = concept_total_indices(
            U[sel], W, head, c, n_designs=n_designs, seed=seed, n_boot=0, progress=False
        ).indices
        per_class.append(
            {
                "accuracy": reconstruction_accuracy(head, A, A_hat, c, batch_size=batch_size),
                "accuracy_encoded": reconstruction_accuracy(head, A, A_enc, c, batch_size=batch_size),
                "c_ins": c_ins(head, U, W, imp, c, images=sel, batch_size=batch_size),
                "c_del": c_del(head, U, W, imp, c, images=sel, batch_size=batch_size),
                "c_gini": c_gini(imp),
            }
        )
    mean = {key: sum(r[key] for r in per_class) / len(per_class) for key in per_class[0]}
    return {
        **mean,
        "agreement": reconstruction_accuracy(head, A, A_hat, None, batch_size=batch_size),
        "sparsity": sparsity(U),
    }


def _check_craft_crops(
    craft_A: torch.Tensor | None, craft_index: torch.Tensor | None, N: int
) -> torch.Tensor | None:
    if craft_A is None:
        if craft_index is not None:
            raise ParameterError("craft_index was given without craft_A (the crops' activations)")
        return None
    if craft_index is None:
        raise ParameterError(
            "craft_A needs craft_index [M] (the image each crop was cut from; data.crops returns it), "
            "so that "
            "stability can split crops by image"
        )
    idx = torch.as_tensor(craft_index).long().flatten()
    if idx.numel() != craft_A.shape[0]:
        raise ParameterError(f"craft_index has {idx.numel()} entries for {craft_A.shape[0]} crops")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= N):
        raise ParameterError(
            f"craft_index must be image indices in [0, {N}), got {int(idx.min())}..{int(idx.max())}"
        )
    return idx.to(craft_A.device)


def face_sweep(
    A: torch.Tensor,
    head: Head,
    target: int | Sequence[int],
    kl_weights: str | Sequence[float] = (0.0, 1e-5, 1e-3, 1e-1, 10.0),
    n_concepts: int = 10,
    seed: int = 0,
    *,
    references: Sequence[str] = REFERENCES,
    craft_A: torch.Tensor | None = None,
    craft_index: torch.Tensor | None = None,
    with_stability: bool = False,
    n_designs: int = 32,
    batch_size: int = 64,
    progress: bool = False,
    config: dict[str, Any] | None = None,
    **face_params: Any,
) -> SweepResult:
    """FACE at each ``λ`` plus the λ = 0 reference rows (ICE, CRAFT), measured with FACE's metrics.

    One row per method and ``λ``, as in the paper's tables. Every factorisation is judged the same way: the
    concept ranking is its global Sobol total-index importance for the target (``n_designs`` designs) on
    the class's correctly classified images, which are also the images C-Ins, C-Del and the accuracy are
    measured on; the codes are those of the fit (FACE, ICE) or the NNLS codes per position (CRAFT, whose
    bank is fitted on one row per crop).

    Parameters
    ----------
    A : Tensor ``[N, *S, C]``
        Non-negative activations of ``N`` images.
    head : callable
        ``[B, *S, C] → [B, K]`` (``ModelSplit.h``), differentiable.
    target : int or sequence of int
        Class ``c``, or several (the class-dependent numbers are then means over the classes).
    kl_weights : sequence of float or str
        The ``λ`` values (``0`` = NMF), or a comma-separated string; see :func:`parse_kl_weights`.
    n_concepts : int
        ``k`` of every method.
    seed : int
        Seed of every fit and of the Sobol design.
    references : sequence of str
        Reference rows among ``"ice"``, ``"craft"`` (``()`` for none).
    craft_A : Tensor ``[M, h, w, C]``, optional
        Activations of CRAFT's crops (each resized to the input size). ``None``: the ``N`` images
        themselves are the crops (right when they are crops already, as the demo crops are).
    craft_index : Tensor ``[M]``, optional
        The image each crop was cut from (with ``craft_A``; stability splits crops by image).
    with_stability : bool
        Also measure stability (5 more fits per row: slower).
    n_designs : int
        Sobol design size.
    batch_size : int
        Images per head call in the metrics.
    progress : bool
        Print one line per row as it finishes.
    config : dict, optional
        Description of the data (model, layer, images, …) stored in the result.
    **face_params
        Passed to :class:`~conceptlens.decompose.face.FACE` (``max_iter``, ``max_time``, ``tol``, …).

    Returns
    -------
    SweepResult
        ``rows`` (keys :data:`SWEEP_COLUMNS`; ``seconds`` is the fit's wall time, ``stability`` NaN unless
        requested), references first, then FACE in the order of ``kl_weights``.
    """
    from conceptlens.decompose.craft import CRAFT
    from conceptlens.decompose.face import FACE, KLTerm
    from conceptlens.decompose.nmf import NMF

    lams = parse_kl_weights(kl_weights)
    _positive("n_concepts", n_concepts)
    refs = [str(r).lower() for r in references]
    bad = [r for r in refs if r not in REFERENCES]
    if bad:
        raise ParameterError(f"unknown reference method {bad[0]!r}; choose among {', '.join(REFERENCES)}")
    targets = _target_list(target)
    N = A.shape[0]
    cidx = _check_craft_crops(craft_A, craft_index, N)
    pred = predictions(head, A, batch_size=batch_size)
    sels = {c: torch.nonzero(pred == c).flatten() for c in targets}
    empty = [c for c, s in sels.items() if s.numel() == 0]
    if empty:
        raise TargetError(
            f"no image is classified as class {empty[0]} by the head; choose images of that class"
        )
    n_images = float(sum(int(v.numel()) for v in sels.values()))
    # The reference rows' KL is measured against p = softmax h(A), computed once.
    term: Any = KLTerm(head, A, face_params.get("batch_images", 256)) if refs else None
    k = n_concepts
    rows: list[dict[str, Any]] = []

    def say(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress:
            print(format_table([row], header=len(rows) == 1), flush=True)

    for ref in refs:
        t0 = time.perf_counter()
        if ref == "ice":
            d: Any = NMF(n_concepts=k, seed=seed)
            U = d.fit_encode(A)
            W = d.components_
            elapsed = time.perf_counter() - t0
            U_enc = d.encode(A)
        else:
            d = CRAFT(n_concepts=k, seed=seed)
            d.fit(A if craft_A is None else craft_A)
            W = d.components_
            elapsed = time.perf_counter() - t0
            U = U_enc = d.encode(A)
        with torch.no_grad():
            A_hat = U @ W
        mse = float((A - A_hat).to(torch.float64).square().mean())
        kl = float(term.value(A_hat).mean())
        row = {
            "method": ref,
            "kl_weight": 0.0,
            "mse": mse,
            "kl": kl,
            "total": mse,
            **_measure(head, A, U, W, U_enc, sels, seed, n_designs, batch_size),
            "stability": math.nan,
            "seconds": elapsed,
            "n_iter": float(getattr(d, "n_iter_", math.nan)),
            "n_images": n_images,
        }
        if with_stability:
            if ref == "ice":
                row["stability"] = stability(lambda a: NMF(n_concepts=k, seed=seed).fit(a).components_, A)
            elif craft_A is None:
                row["stability"] = stability(lambda a: CRAFT(n_concepts=k, seed=seed).fit(a).components_, A)
            else:
                where_default = cast(torch.Tensor, cidx)

                def craft_refit(
                    train: torch.Tensor, crops: torch.Tensor = craft_A, where: torch.Tensor = where_default
                ) -> torch.Tensor:
                    keep = torch.isin(where, train.to(where.device))
                    return CRAFT(n_concepts=k, seed=seed).fit(crops[keep]).components_

                # The folds split images; each refit sees the crops of its training images.
                row["stability"] = stability(craft_refit, torch.arange(N, device=A.device))
        say(row)

    for lam in lams:
        d = FACE(n_concepts=k, kl_weight=float(lam), head=head, seed=seed, **face_params)
        t0 = time.perf_counter()
        U = d.fit_encode(A)
        elapsed = time.perf_counter() - t0
        W = d.components_
        with torch.no_grad():
            U_enc = d.encode(A)
        row = {
            "method": "face",
            "kl_weight": float(lam),
            "mse": d.objective_["mse"],
            "kl": d.objective_["kl"],
            "total": d.objective_["total"],
            **_measure(head, A, U, W, U_enc, sels, seed, n_designs, batch_size),
            "stability": math.nan,
            "seconds": elapsed,
            "n_iter": float(d.n_iter_),
            "n_images": n_images,
        }
        if with_stability:
            params = dict(n_concepts=k, kl_weight=float(lam), head=head, seed=seed, **face_params)

            def refit(a: torch.Tensor, params: dict[str, Any] = params) -> torch.Tensor:
                return FACE(**params).fit(a).components_

            row["stability"] = stability(refit, A)
        say(row)

    cfg = {
        "n_concepts": k,
        "seed": seed,
        "targets": targets,
        "kl_weights": list(lams),
        "references": refs,
        "with_stability": bool(with_stability),
        "n_designs": n_designs,
        "n_images": int(N),
        "image_shape": list(A.shape[1:-1]),
        "channels": int(A.shape[-1]),
        "craft_crops": "the images themselves" if craft_A is None else f"{int(craft_A.shape[0])} crops",
        "face_params": {key: v for key, v in face_params.items() if isinstance(v, (int, float, str, bool))},
        **(config or {}),
    }
    return SweepResult(rows=rows, config=cfg)


def sweep(
    A: torch.Tensor,
    head: Head,
    target: int | Sequence[int],
    kl_weights: Sequence[float] = (0.0, 1e-5, 1e-3, 1e-1, 10.0),
    n_concepts: int = 10,
    seed: int = 0,
    *,
    with_stability: bool = False,
    n_designs: int = 32,
    batch_size: int = 64,
    progress: bool = False,
    **face_params: Any,
) -> list[dict[str, float]]:
    """FACE's rows of :func:`face_sweep` only (no reference rows), as plain dicts.

    Parameters are those of :func:`face_sweep`.

    Returns
    -------
    list of dict
        Per ``λ``: ``kl_weight``, ``mse``, ``kl``, ``total``, ``accuracy`` (fit codes), ``accuracy_encoded``
        (codes from ``encode(A)``), ``agreement`` (top-1 of ``h(Â)`` = top-1 of ``h(A)`` over *all* images),
        ``c_ins``, ``c_del``, ``c_gini``, ``sparsity``, ``stability`` (NaN unless requested), ``time`` (fit
        seconds), ``n_iter``, ``n_images`` (the class's images).
    """
    res = face_sweep(
        A,
        head,
        target,
        kl_weights,
        n_concepts,
        seed,
        references=(),
        with_stability=with_stability,
        n_designs=n_designs,
        batch_size=batch_size,
        progress=progress,
        **face_params,
    )
    out = []
    for r in res.rows:
        row = {key: float(v) for key, v in r.items() if key not in ("method", "seconds")}
        row["time"] = float(r["seconds"])
        out.append(row)
    return out


def format_table(rows: Sequence[dict[str, Any]], header: bool = True) -> str:
    """Rows of :func:`face_sweep` (or :func:`sweep`) as a fixed-width text table."""
    cols = [
        "kl_weight",
        "mse",
        "kl",
        "accuracy",
        "accuracy_encoded",
        "agreement",
        "c_ins",
        "c_del",
        "c_gini",
        "sparsity",
        "stability",
        "seconds",
        "n_iter",
    ]
    names = [
        "λ",
        "MSE",
        "KL",
        "acc",
        "acc(enc)",
        "agree(all)",
        "C-Ins",
        "C-Del",
        "C-Gini",
        "sparsity",
        "stability",
        "time s",
        "iters",
    ]
    lines = [f"{'method':<7}" + " ".join(f"{n:>9}" for n in names)] if header else []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, r.get("time", math.nan) if c == "seconds" else math.nan)
            v = math.nan if v is None else float(v)
            cells.append(
                f"{v:9.3g}"
                if c in ("kl_weight", "mse", "kl")
                else f"{int(v):9d}"
                if c == "n_iter" and math.isfinite(v)
                else f"{v:9.3f}"
            )
        lines.append(
            f"{_LABELS.get(str(r.get('method', 'face')), str(r.get('method'))):<7}" + " ".join(cells)
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the sweep's result: table, verdict, files, figure, report section
# ------------------------------------------------------------------------------------------------
def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _fmt(v: Any, digits: int = 3, sci: bool = False) -> str:
    x = _num(v)
    if not math.isfinite(x):
        return "—"
    return f"{x:.{digits}g}" if sci else f"{x:.{digits}f}"


@dataclass
class SweepResult:
    """The rows of a λ sweep and how they were made.

    Attributes
    ----------
    rows : list[dict]
        One dict per (method, ``λ``) with the keys of :data:`SWEEP_COLUMNS`: ``method`` (``"face"``,
        ``"ice"``, ``"craft"``), ``kl_weight`` (0 for the references), the metrics as floats (NaN where not
        measured), ``seconds`` (fit wall time), ``n_iter`` and ``n_images`` (the class's images).
    config : dict
        The data and settings (model, layer, images, targets, ``k``, seed, …).
    """

    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def face_rows(self) -> list[dict[str, Any]]:
        """FACE's rows sorted by ``λ``."""
        return sorted((r for r in self.rows if r["method"] == "face"), key=lambda r: float(r["kl_weight"]))

    def reference(self, method: str) -> dict[str, Any] | None:
        """The row of a reference method (``"ice"`` or ``"craft"``), or None."""
        return next((r for r in self.rows if r["method"] == method), None)

    # -- the seed's claim ---------------------------------------------------------------------
    def claim(self, tol: float = 0.02, mse_tol: float = 0.10, other_tol: float = 0.05) -> dict[str, Any]:
        """Does the KL term improve faithfulness without hurting much else? Checked at every ``λ > 0``.

        Against FACE at ``λ = 0`` (ICE when the sweep has no ``λ = 0``), a ``λ`` *holds* when accuracy,
        C-Ins and C-Del each move by ``≥ −tol`` and at least one gains ``> tol``, while the MSE rises by at
        most ``mse_tol`` (relative) and C-Gini and stability (when measured) drop, and sparsity (the
        fraction of non-zero codes) rises, by at most ``other_tol``.

        Returns
        -------
        dict
            ``base`` (the row compared against), ``holds_at`` (the ``λ`` where it holds), ``best`` (the
            one with the largest summed gain, or None), ``per_lambda`` (gains, costs, verdict and reason
            per ``λ``) and ``text`` (one sentence).
        """
        face = self.face_rows()
        base = next((r for r in face if float(r["kl_weight"]) == 0.0), None) or self.reference("ice")
        if base is None:
            return {
                "base": None,
                "holds_at": [],
                "best": None,
                "per_lambda": [],
                "text": "no λ = 0 row (FACE at λ = 0 or ICE) to compare against",
            }
        per: list[dict[str, Any]] = []
        for r in face:
            lam = float(r["kl_weight"])
            if lam == 0.0:
                continue
            gains = {m: _num(r[m]) - _num(base[m]) for m in _GAINS}
            improves = all(g >= -tol for g in gains.values()) and any(g > tol for g in gains.values())
            mse_rise = _num(r["mse"]) / max(_num(base["mse"]), 1e-30) - 1.0
            hurt = []
            if mse_rise > mse_tol:
                hurt.append(f"MSE +{100 * mse_rise:.0f} %")
            for m in ("c_gini", "stability"):
                d = _num(r[m]) - _num(base[m])
                if math.isfinite(d) and d < -other_tol:
                    hurt.append(f"{m.replace('_', '-')} {d:+.3f}")
            ds = _num(r["sparsity"]) - _num(base["sparsity"])
            if math.isfinite(ds) and ds > other_tol:
                hurt.append(f"non-zero codes {ds:+.3f}")
            lost = [f"{m} {g:+.3f}" for m, g in gains.items() if g < -tol]
            why = (
                "; ".join(lost + hurt)
                if (lost or hurt)
                else "no faithfulness number gains more than the tolerance"
                if not improves
                else ""
            )
            per.append(
                {
                    "kl_weight": lam,
                    "holds": improves and not hurt,
                    "gains": gains,
                    "mse_rise": mse_rise,
                    "why": why,
                }
            )
        holds = [p["kl_weight"] for p in per if p["holds"]]
        best = max((p for p in per if p["holds"]), key=lambda p: sum(p["gains"].values()), default=None)
        name = "FACE at λ = 0" if base["method"] == "face" else "ICE"
        if best is not None:
            g = best["gains"]
            text = (
                f"holds at λ ∈ {{{', '.join(f'{v:g}' for v in holds)}}} (against {name}); best λ = "
                f"{best['kl_weight']:g}: accuracy {g['accuracy']:+.3f}, C-Ins {g['c_ins']:+.3f}, "
                f"C-Del {g['c_del']:+.3f}, MSE {100 * best['mse_rise']:+.1f} %"
            )
        elif per:
            text = f"does not hold at any λ tried (against {name}): " + "; ".join(
                f"λ = {p['kl_weight']:g}: {p['why']}" for p in per
            )
        else:
            text = "no λ > 0 in the sweep"
        return {
            "base": base["method"],
            "holds_at": holds,
            "best": None if best is None else best["kl_weight"],
            "per_lambda": per,
            "text": text,
        }

    # -- text ----------------------------------------------------------------------------------
    def table(self) -> str:
        """The rows as a fixed-width text table (as the CLI prints it)."""
        return format_table(self.rows)

    def markdown(self, title: str | None = None) -> str:
        """The rows as a markdown table, with the data it was measured on and the verdict on the claim."""
        cfg = self.config
        head = title or f"FACE λ sweep: {cfg.get('dataset', 'activations')}"
        desc = (
            f"{head}. {cfg.get('n_images', '?')} images, layer {cfg.get('layer', '?')}, "
            f"target {cfg.get('target_names', cfg.get('targets', '?'))}, k = {cfg.get('n_concepts', '?')}, "
            f"seed {cfg.get('seed', '?')}; accuracy, C-Ins and C-Del on the "
            f"{int(_num(self.rows[0]['n_images'])) if self.rows else '?'} correctly classified images of "
            "the class(es); top-1 kept (all): argmax h(UW) = argmax h(A) over every image. ↑ higher is "
            "better, ↓ lower is better."
        )
        lines = [
            desc,
            "",
            "| method | λ | MSE ↓ | KL ↓ | accuracy ↑ | top-1 kept (all) ↑ | C-Ins ↑ | C-Del ↑ | C-Gini ↑ "
            "| sparsity ↓ | stability ↑ "
            "| fit s | iters |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in [r for r in self.rows if r["method"] != "face"] + self.face_rows():
            lines.append(
                f"| {_LABELS.get(r['method'], r['method'])} | {_fmt(r['kl_weight'], 3, True)} "
                f"| {_fmt(r['mse'], 4)} | {_fmt(r['kl'], 4)} | {_fmt(r['accuracy'])} "
                f"| {_fmt(r['agreement'])} | {_fmt(r['c_ins'])} "
                f"| {_fmt(r['c_del'])} | {_fmt(r['c_gini'])} | {_fmt(r['sparsity'])} "
                f"| {_fmt(r['stability'])} | {_fmt(r['seconds'], 1)} | {_fmt(r['n_iter'], 0)} |"
            )
        lines += [
            "",
            f"Claim (the KL term improves accuracy, C-Ins, C-Del without hurting much else): "
            f"{self.claim()['text']}.",
        ]
        return "\n".join(lines) + "\n"

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``config``, ``rows`` (NaN → null) and ``claim``."""
        return _json_safe(
            {
                "config": self.config,
                "rows": [{c: r.get(c) for c in SWEEP_COLUMNS} for r in self.rows],
                "claim": self.claim(),
            }
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepResult:
        """Inverse of :meth:`to_dict` (null → NaN)."""
        rows = [
            {c: (r.get(c) if c == "method" else _num(r.get(c))) for c in SWEEP_COLUMNS} for r in d["rows"]
        ]
        return cls(rows=rows, config=dict(d.get("config", {})))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the rows (columns :data:`SWEEP_COLUMNS`, floats exact, NaN as ``nan``) atomically."""
        from conceptlens.explainer import _atomic_write

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(SWEEP_COLUMNS)
        for r in self.rows:
            w.writerow([r["method"] if c == "method" else repr(_num(r.get(c))) for c in SWEEP_COLUMNS])
        p = Path(path)
        _atomic_write(p, buf.getvalue().encode())
        return p

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON atomically."""
        from conceptlens.explainer import _atomic_write

        p = Path(path)
        _atomic_write(p, (json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n").encode())
        return p

    def figure(self, title: str | None = None) -> Any:
        """The λ curves (see :func:`sweep_figure`)."""
        return sweep_figure([self], [title or str(self.config.get("dataset", ""))])

    def save(self, out: str | os.PathLike[str], name: str = "sweep") -> dict[str, Path]:
        """Write ``out/<name>.csv``, ``.json`` and ``.png``; returns their paths by suffix."""
        from conceptlens.report.figures import save_png

        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        return {
            "csv": self.to_csv(d / f"{name}.csv"),
            "json": self.to_json(d / f"{name}.json"),
            "png": save_png(self.figure(), d / f"{name}.png"),
        }


def _x_positions(lams: Sequence[float]) -> tuple[Callable[[float], float], float, list[float]]:
    """Map ``λ`` to a log10 axis where ``λ = 0`` sits 1.5 decades left of the smallest positive ``λ``."""
    pos = sorted(v for v in lams if v > 0)
    if not pos:
        return (lambda v: 0.0), 0.0, []
    lo, hi = math.log10(pos[0]), math.log10(pos[-1])
    x0 = lo - 1.5
    decades = [float(e) for e in range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1)]
    if len(decades) > 8:  # too many ticks to read: every other decade
        decades = decades[::2]
    return (lambda v: math.log10(v) if v > 0 else x0), x0, decades


def sweep_figure(results: Sequence[SweepResult], titles: Sequence[str] | None = None) -> Any:
    """The λ curves: one row of three panels per sweep (MSE; KL; accuracy, C-Ins, C-Del and stability).

    ``λ`` is on a log axis; ``λ = 0`` (FACE at λ = 0) is drawn at the left edge, 1.5 decades before the
    smallest positive ``λ``, behind an axis break; ICE and CRAFT are hollow markers at that position.

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas (no pyplot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = max(len(results), 1)
    fig = Figure(figsize=(12, 3.4 * n), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    ref_style = {"ice": ("s", -0.28), "craft": ("^", 0.28)}
    for row, res in enumerate(results):
        face = res.face_rows()
        X, x0, decades = _x_positions([float(r["kl_weight"]) for r in face])
        xs = [X(float(r["kl_weight"])) for r in face]
        panels = [
            [("mse", "MSE", "tab:blue")],
            [("kl", "KL", "tab:red")],
            [
                ("accuracy", "accuracy", "tab:green"),
                ("c_ins", "C-Ins", "tab:purple"),
                ("c_del", "C-Del", "tab:orange"),
                ("stability", "stability", "tab:gray"),
            ],
        ]
        for col, (ax, series) in enumerate(zip(axes[row], panels, strict=True)):
            for key, label, colour in series:
                ys = [_num(r[key]) for r in face]
                if not any(math.isfinite(y) for y in ys):
                    continue
                if decades and len(xs) > 1 and xs[0] == x0:
                    # dashed across the axis break: λ = 0 is not a point of the log scale
                    ax.plot(xs[:2], ys[:2], "--", color=colour, lw=1)
                    ax.plot(xs[:1], ys[:1], "o", color=colour, ms=4)
                    ax.plot(xs[1:], ys[1:], "o-", color=colour, label=label, ms=4)
                else:
                    ax.plot(xs, ys, "o-", color=colour, label=label, ms=4)
                for ref, (marker, dx) in ref_style.items():
                    rr = res.reference(ref)
                    if rr is not None and math.isfinite(_num(rr[key])):
                        ax.plot([x0 + dx], [_num(rr[key])], marker, mfc="none", color=colour, ms=7)
            ax.set_xticks([x0, *decades])
            ax.set_xticklabels(["0", *[f"$10^{{{int(e)}}}$" for e in decades]])
            if decades:
                ax.set_xlim(x0 - 0.6, max(xs) + 0.4)
                # axis break between λ = 0 and the first decade shown
                brk = x0 + 0.75
                ax.plot(
                    [brk - 0.1, brk + 0.1],
                    [0, 0.02],
                    color="black",
                    lw=0.8,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
                ax.plot(
                    [brk + 0.05, brk + 0.25],
                    [0, 0.02],
                    color="black",
                    lw=0.8,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
            ax.set_xlabel("λ (KL weight)")
            ax.grid(alpha=0.3)
            if col == 2:
                ax.set_ylim(-0.03, 1.05)
            if row == 0 or col == 2:
                handles, _ = ax.get_legend_handles_labels()
                extra = [
                    Line2D([], [], marker=m, ls="none", mfc="none", color="black", label=_LABELS[r])
                    for r, (m, _) in ref_style.items()
                    if res.reference(r) is not None
                ]
                ax.legend(handles=handles + extra, fontsize=7, loc="best", frameon=False)
        title = (titles[row] if titles and row < len(titles) else "") or str(res.config.get("dataset", ""))
        axes[row][0].set_title(f"{title}: MSE" if title else "MSE", fontsize=9, loc="left")
        axes[row][1].set_title("KL(softmax h(A) ‖ softmax h(UW))", fontsize=9, loc="left")
        axes[row][2].set_title("faithfulness (FACE's definitions)", fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def sweep_section(result: SweepResult) -> Any:
    """A report :class:`~conceptlens.report.html.Section`: the λ curves, the table and the verdict.

    Parameters
    ----------
    result : SweepResult

    Returns
    -------
    conceptlens.report.html.Section
        Title "FACE λ sweep", anchor ``face-sweep``, one image ``face_sweep.png``.
    """
    from html import escape

    from conceptlens.report.html import Section

    cfg = result.config
    cols = [
        ("kl_weight", "λ"),
        ("mse", "MSE ↓"),
        ("kl", "KL ↓"),
        ("accuracy", "accuracy ↑"),
        ("agreement", "top-1 kept (all) ↑"),
        ("c_ins", "C-Ins ↑"),
        ("c_del", "C-Del ↑"),
        ("c_gini", "C-Gini ↑"),
        ("sparsity", "sparsity ↓"),
        ("stability", "stability ↑"),
        ("seconds", "fit s"),
    ]
    head = "".join(f"<th>{escape(t)}</th>" for t in ["method", *[c[1] for c in cols]])
    body = []
    for r in [r for r in result.rows if r["method"] != "face"] + result.face_rows():
        cells = [escape(_LABELS.get(r["method"], str(r["method"])))]
        for key, _ in cols:
            cells.append(
                _fmt(r[key], 3, True)
                if key in ("kl_weight", "mse", "kl")
                else _fmt(r[key], 1)
                if key == "seconds"
                else _fmt(r[key])
            )
        body.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    claim = "Claim (the KL term improves faithfulness without hurting much else): " + result.claim()["text"]
    intro = (
        f"FACE adds λ·KL(softmax h(A) ‖ softmax h(UW)) to NMF's reconstruction error. One fit per λ "
        f"(k = {cfg.get('n_concepts', '?')}, {cfg.get('n_images', '?')} images of "
        f"{cfg.get('dataset', 'the data')}); ICE (plain NMF) and CRAFT (NMF on crops) are the λ = 0 "
        "references. Accuracy, C-Ins and C-Del are FACE's: top-1 accuracy of h(UW) on the class's "
        "correctly classified images, with concepts inserted or deleted by Sobol importance."
    )
    html = (
        f"<p>{escape(intro)}</p>"
        '<img src="img/face_sweep.png" alt="FACE λ sweep: MSE, KL and faithfulness against λ">'
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        f"<p>{escape(claim)}.</p>"
    )
    return Section("FACE λ sweep", html, anchor="face-sweep", images={"face_sweep.png": result.figure()})


# ------------------------------------------------------------------------------------------------
# the data of the two standard sweeps (used by `conceptlens sweep` and `conceptlens bench face`)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepData:
    """Activations, head and targets of a sweep, with CRAFT's crops when the images are not crops.

    Attributes
    ----------
    A : Tensor ``[N, h, w, C]``
        Activations of the images.
    head : callable
        ``ModelSplit.h``.
    targets : list[int]
        Classes explained (the class-dependent numbers are averaged over them).
    craft_A : Tensor ``[M, h, w, C]`` or None
        Activations of CRAFT's crops; None when the images are crops already.
    craft_index : Tensor ``[M]`` or None
        Image of each crop.
    config : dict
        ``dataset``, ``model``, ``layer``, ``target_names``, how the images were made.
    """

    A: torch.Tensor
    head: Head
    targets: list[int]
    craft_A: torch.Tensor | None
    craft_index: torch.Tensor | None
    config: dict[str, Any]


def _craft_crops(
    split: Any, x: torch.Tensor, patch: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from conceptlens.io.crops import crops

    c, idx, _ = crops(x, patch_size=patch, out_size=x.shape[-1])
    return split.g(c, progress=progress), idx


def real_sweep_data(
    model: str = "efficientnet_lite0",
    *,
    weights: str | None = None,
    images: str | Sequence[str] | None = None,
    layer: str = "auto",
    target: int | str | None = None,
    crop: int | None = None,
    craft_patch: int | None = None,
    n_photos: int | None = None,
    progress: bool | None = None,
) -> SweepData:
    """The sweep's data on a real model: by default EfficientNet-Lite0 on the demo crops.

    Parameters
    ----------
    model, weights
        As in :func:`conceptlens.io.models.load`.
    images
        Files, folders or globs; None: the bundled sample photos cut into ``crop``-pixel crops (the demo
        set), target = the class predicted for 'chelsea'.
    layer
        Layer name or ``"auto"``.
    target
        Class index or name; default: the class predicted for 'chelsea' (demo) or the most predicted one.
    crop
        Cut the images into crops of this many pixels (resized to the input size); default 112 for the demo
        photos, 0 (whole images) for ``images``.
    craft_patch
        Crop size in pixels for CRAFT's reference bank; default: the images themselves when they are
        crops, else CRAFT's 64 px on 224 px (scaled to the input size). 0: always the images themselves.
    n_photos
        Demo only: use the first ``n_photos`` sample photos ('chelsea' first) instead of all.
    progress
        Progress bars of the forward passes.

    Returns
    -------
    SweepData
    """
    import conceptlens as cl
    from conceptlens.explainer import resolve_target

    m = cl.models.load(model, weights=weights)
    split = cl.ModelSplit(m, layer)
    preset = m.preset
    if images is None:
        names = cl.data.sample_image_names()
        if n_photos is not None:
            names = names[: _positive("n_photos", n_photos)]
        photos = cl.data.sample_images(preset, names=names)
        patch = 112 if crop is None else crop
        x = cl.data.crops(photos, patch_size=patch, out_size=photos.shape[-1])[0] if patch else photos
        source = (
            f"the demo crops ({len(names)} sample photos, {patch}-px crops)" if patch else "the sample photos"
        )
        is_crops = bool(patch)
        if target is None:
            with torch.no_grad():
                target = int(m(photos[:1]).argmax(1))
    else:
        x = cl.data.load_images(images, preset=preset)
        is_crops = bool(crop)
        if crop:
            x = cl.data.crops(x, patch_size=crop, out_size=x.shape[-1])[0]
        source = f"{x.shape[0]} {'crops' if crop else 'images'} of {images}"
    A = split.g(x, progress=progress)
    n_out = int(split.h(A[:1]).shape[1])
    if target is None:
        with torch.no_grad():
            target = int(torch.bincount(predictions(split.h, A), minlength=n_out).argmax())
    c = resolve_target(target, list(preset.classes), n_out)
    craft_A = craft_index = None
    if craft_patch is None:
        craft_patch = 0 if is_crops else max(8, round(x.shape[-1] * 64 / 224))
    if craft_patch:
        craft_A, craft_index = _craft_crops(split, x, craft_patch, bool(progress))
    cname = preset.classes[c] if c < len(preset.classes) else str(c)
    dataset = ("EfficientNet-Lite0 on " if model == "efficientnet_lite0" else f"{model} on ") + source
    return SweepData(
        A=A,
        head=split.h,
        targets=[c],
        craft_A=craft_A,
        craft_index=craft_index,
        config={
            "dataset": dataset,
            "model": model,
            "layer": split.layer,
            "target_names": [cname],
            "craft_patch": craft_patch,
        },
    )


def world_sweep_data(
    *,
    n_per_class: int = 20,
    target: int | str | Sequence[int | str] | None = None,
    craft_patch: int | None = None,
    seed: int = 0,
) -> SweepData:
    """The sweep's data on the ground-truth concept world (:mod:`~conceptlens.world`) and its trained CNN.

    Parameters
    ----------
    n_per_class
        Images per class (the first of a seeded stream, as the ground-truth leaderboard draws them).
    target
        One class (index or name, e.g. ``"disc+red"``): its images only. A list of classes, None or
        ``"all"`` (every class): one bank for their images, the class-dependent numbers averaged over them.
    craft_patch
        CRAFT's crop size in pixels; default ``S/3`` (one layout cell, as in the leaderboard).
    seed
        Seed of the image stream.

    Returns
    -------
    SweepData
    """
    from conceptlens.explainer import resolve_target
    from conceptlens.split.model_split import ModelSplit
    from conceptlens.world import concepts as synthetic
    from conceptlens.world import leaderboard as groundtruth

    _positive("n_per_class", n_per_class)
    model = synthetic.trained_model(seed=0)
    world = synthetic.ConceptWorld(**model.world_config)
    split = ModelSplit(model, "auto")
    names = list(world.class_names)
    if target is None or (isinstance(target, str) and target.lower() == "all"):
        classes = list(range(world.n_classes))
    elif isinstance(target, (list, tuple)):
        classes = [resolve_target(t, names, world.n_classes) for t in target]
        if not classes:
            raise TargetError("no class given; pass a class index or name, or 'all'")
    else:
        classes = [resolve_target(target, names, world.n_classes)]
    data = groundtruth.class_images(world, n_per_class, classes, seed=seed)
    x = torch.cat([data[c][0] for c in classes])
    A = split.g(x, progress=False)
    patch = max(8, world.size // 3) if craft_patch is None else craft_patch
    craft_A = craft_index = None
    if patch:
        craft_A, craft_index = _craft_crops(split, x, patch, False)
    which = (
        "all classes"
        if len(classes) == world.n_classes
        else f"class {names[classes[0]]!r}"
        if len(classes) == 1
        else f"{len(classes)} classes"
    )
    return SweepData(
        A=A,
        head=split.h,
        targets=classes,
        craft_A=craft_A,
        craft_index=craft_index,
        config={
            "dataset": f"the ground-truth concept world ({which}, {n_per_class} images per class)",
            "model": "synthetic.trained_model(seed=0)",
            "layer": split.layer,
            "target_names": [names[c] for c in classes],
            "craft_patch": patch,
        },
    )


def run_sweep(
    data: SweepData, kl_weights: str | Sequence[float], n_concepts: int = 10, seed: int = 0, **kwargs: Any
) -> SweepResult:
    """:func:`face_sweep` on a :class:`SweepData` (its CRAFT crops and config included)."""
    return face_sweep(
        data.A,
        data.head,
        data.targets,
        kl_weights,
        n_concepts,
        seed,
        craft_A=data.craft_A,
        craft_index=data.craft_index,
        config=data.config,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------
# `conceptlens bench face`
# ------------------------------------------------------------------------------------------------
def run_benchmark(
    quick: bool = False, out: str | os.PathLike[str] = Path("bench/results"), verbose: bool = True
) -> dict[str, Any]:
    """FACE's λ sweep on EfficientNet-Lite0 (demo crops) and the ground-truth world: face.{json,md,png}.

    Full: all demo crops, ``λ ∈ {0, 1e-5, 1e-3, 1e-2, 1e-1, 1, 10}``, ``k = 10``, with stability, each fit
    capped at 60 s; the world (every class, 20 images each, one bank) at ``k = 10`` and at ``k = 5``: with
    fewer concepts than the world's 8 the reconstruction must leave something out, and the KL term decides
    what. ``quick``: the crops of the first three photos and 8 world images of two classes, ``k = 5``,
    ``λ ∈ {0, 1e-1}``, no stability, short fits (< 60 s on an idle machine).

    Returns
    -------
    dict
        The JSON payload: ``quick``, ``seconds`` and one :meth:`SweepResult.to_dict` per sweep (``lite0``,
        ``world``, and ``world_k5`` when not quick).
    """
    from conceptlens.bench import write_json
    from conceptlens.explainer import _atomic_write
    from conceptlens.report.figures import save_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        lams: tuple[float, ...] = (0.0, 1e-1)
        params: dict[str, Any] = {"max_iter": 15, "max_time": 5.0, "encode_kl_steps": 2}
        real = real_sweep_data(n_photos=3, progress=False)
        world = world_sweep_data(n_per_class=8, target=[0, 1], seed=0)
        plan = [("lite0", real, 5, "EfficientNet-Lite0, demo crops"),
                ("world", world, 5, "ground-truth world")]
    else:
        lams = (0.0, 1e-5, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
        params = {"max_time": 60.0}
        real = real_sweep_data(progress=False)
        world = world_sweep_data(n_per_class=20, target=None, seed=0)
        plan = [("lite0", real, 10, "EfficientNet-Lite0, demo crops, k = 10"),
                ("world", world, 10, "ground-truth world, k = 10"),
                ("world_k5", world, 5, "ground-truth world, k = 5")]
    results: dict[str, SweepResult] = {}
    t0 = time.perf_counter()
    for name, data, k, _ in plan:
        if verbose:
            print(f"FACE λ sweep on {data.config['dataset']}, layer {data.config['layer']}, "
                  f"target {data.config['target_names']}, k = {k}", flush=True)
        res = run_sweep(data, lams, k, 0, with_stability=not quick, n_designs=16 if quick else 32,
                        progress=verbose, **params)
        results[name] = res
        if verbose:
            print(res.claim()["text"], flush=True)
    payload = {"quick": quick, "seconds": time.perf_counter() - t0,
               **{name: r.to_dict() for name, r in results.items()}}
    paths = {"json": write_json(out, "face", payload)}
    tables = [results[n].markdown(f"FACE λ sweep: {t}") for n, _, _, t in plan]
    md = "\n".join(["# FACE λ sweep", "", *tables])
    _atomic_write(out / "face.md", md.encode())
    paths["md"] = out / "face.md"
    fig = sweep_figure([results[n] for n, *_ in plan], [t for *_, t in plan])
    paths["png"] = save_png(fig, out / "face.png")
    if verbose:
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return payload
