"""FACE's faithfulness and complexity metrics (the definitions of the authors' code), as pure functions.

Notation: ``h`` the head (``[B, *S, C] → [B, K]`` logits), ``A [N, *S, C]`` activations of ``N`` images,
``U [N, *S, k]`` concept coefficients, ``W [k, C]`` the bank, ``c`` the target class, ``imp [k]`` a
global concept importance (FACE ranks concepts once, by Sobol total indices). Accuracies are top-1
fractions over "the class's images": by default the images that ``h(A)`` classifies as ``c``.

* **accuracy** on reconstructed activations: ``argmax h(Â) == argmax h(A)``.
* **C-Del**, :func:`accuracy_deletion` (AOPC, *higher* is better): zero the top-``i`` concepts for
  ``i = 0..k``, ``acc_i`` = accuracy of ``h(U_i W)`` on the class;
  ``C-Del = Σ_{i=0..k} (acc_0 − acc_i) / (k + 2)``. It is built on accuracies, where CRAFT's holistic
  C-Deletion (:func:`conceptlens.metrics.craft.c_deletion`, lower is better) is built on class scores:
  hence the names apart (the paper's ``c_del`` / ``c_ins`` remain as deprecated aliases).
* **C-Ins**, :func:`accuracy_insertion`: start from ``U = 0`` (``i = 0``, the head sees zero activations)
  and restore the top-``i`` concepts, ``i = 1..k``; ``C-Ins = trapz(acc_i, i) / k ∈ [0, 1]``.
* **C-Gini** of ``|imp|`` sorted ascending: ``G = Σ_i (2i − n − 1) s_(i) / (n Σ s)`` (0 = uniform,
  ``(n−1)/n`` = one concept carries everything).
* **sparsity**: FACE's is :func:`conceptlens.metrics.ice.sparsity` with ``tol=0`` (exact non-zeros)
  and a float64 mean; every row of ``U`` has ``k`` entries, so the mean over rows of the fraction of
  non-zeros is the overall fraction.
* **stability**: split the images in ``n_folds`` folds (seed 42), fit a bank on each training split,
  L2-normalise its rows, match each pair of banks by the Hungarian method on ``1 − cosine`` and average
  the matched cosines, then average over the pairs.
* **held-out split**, :func:`holdout_split`: the images a bank is *fitted* on and the images it is
  *scored* on are disjoint (seeded, stratified by the model's predicted class), so that no number is
  measured on the images whose own predictions shaped the codes (FACE's KL term sees ``h(A)`` of every
  fitted image).

All functions take tensors and call ``h`` in batches of whole images, without autograd. The λ sweep that
uses them lives in :mod:`conceptlens.workflows.sweep`; its report section in
:mod:`conceptlens.report.sections.sweep`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from conceptlens._check import check_float, check_int
from conceptlens.errors import ParameterError, TargetError

__all__ = [
    "holdout_split",
    "HOLDOUT",
    "predictions",
    "correctly_classified",
    "reconstruction_accuracy",
    "deletion_curve",
    "insertion_curve",
    "accuracy_deletion",
    "accuracy_insertion",
    "c_del",
    "c_ins",
    "c_gini",
    "matched_cosine",
    "stability",
]

Head = Callable[[torch.Tensor], torch.Tensor]

#: Default fraction of the images held out for scoring (per predicted class; the rest is fitted on).
HOLDOUT = 0.5


# ------------------------------------------------------------------------------------------------
# the class's images
# ------------------------------------------------------------------------------------------------
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
    check_int("batch_size", batch_size, 1)
    out = []
    with torch.no_grad():
        for i in range(0, A.shape[0], batch_size):
            out.append(h(A[i : i + batch_size]).argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=A.device)


def holdout_split(
    labels: torch.Tensor | Sequence[int], fraction: float = HOLDOUT, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``N`` images into fit and held-out indices, stratified by ``labels``.

    For each label value with ``m`` images, ``round(fraction · m)`` of them (at least 1 and at most
    ``m − 1`` when ``m ≥ 2``; none when ``m = 1``) are drawn without replacement by a local
    ``torch.Generator`` seeded with ``seed`` (labels in increasing order), the rest are fitted on.

    Parameters
    ----------
    labels : Tensor ``[N]`` (int)
        One label per image: FACE's metrics use the predicted class ``argmax h(A)``, so that each class's
        correctly classified images are split between both sides.
    fraction : float
        Held-out fraction, ``0 < fraction < 1``.
    seed : int
        Seed of the draw; same seed, same split.

    Returns
    -------
    fit, held_out : Tensor ``[N_fit]``, Tensor ``[N_held]`` (long, ascending, on ``labels``' device)
        Disjoint; their union is ``0..N−1``.

    Raises
    ------
    ParameterError
        ``fraction`` not in ``(0, 1)``, or labels that are not a 1-D integer tensor.
    """
    f = check_float("fraction", fraction, 0.0, maximum=1.0, strict_min=True,
                    hint="the held-out share of the images, e.g. 0.5")
    if f >= 1.0:
        raise ParameterError(f"fraction must be < 1 (some images must be fitted on), got {f}")
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ParameterError(
            f"labels must be a 1-D integer tensor [N], got {y.dtype} of shape {list(y.shape)}"
        )
    y_cpu = y.detach().cpu().long()
    gen = torch.Generator().manual_seed(int(seed))
    held = []
    for v in torch.unique(y_cpu).tolist():  # sorted: the draw does not depend on the order of the images
        idx = torch.nonzero(y_cpu == v).flatten()
        m = idx.numel()
        n_held = 0 if m < 2 else min(max(round(f * m), 1), m - 1)
        held.append(idx[torch.randperm(m, generator=gen)[:n_held]])
    mask = torch.zeros(y_cpu.numel(), dtype=torch.bool)
    if held:
        mask[torch.cat(held)] = True
    out = (torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten())
    return out[0].to(y.device), out[1].to(y.device)


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


def _accuracy_curve(
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
    imp = torch.as_tensor(importance, dtype=torch.float64).detach().cpu().flatten()  # ranks on the CPU
    if imp.numel() != k:
        raise ParameterError(f"importance must have k={k} entries, got {imp.numel()}")
    check_int("batch_size", batch_size, 1)
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
    return _accuracy_curve(h, U, W, importance, target, False, images, batch_size)


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
    return _accuracy_curve(h, U, W, importance, target, True, images, batch_size)


def accuracy_deletion(
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

    Not CRAFT's C-Deletion (:func:`conceptlens.metrics.craft.c_deletion`: class scores, lower is better).

    Parameters
    ----------
    h, U, W, importance, target, images, batch_size
        As in :func:`deletion_curve` (``U [N, *S, k]``, ``W [k, C]``, ``importance [k]``).

    Returns
    -------
    float in ``[0, (k+1)/(k+2))``
    """
    acc = deletion_curve(h, U, W, importance, target, images=images, batch_size=batch_size)
    k = acc.numel() - 1
    return float((acc[0] - acc).sum() / (k + 2))


def accuracy_insertion(
    h: Head,
    U: torch.Tensor,
    W: torch.Tensor,
    importance: torch.Tensor,
    target: int,
    *,
    images: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 64,
) -> float:
    """FACE's C-Ins: ``trapz(acc_i, i) / k`` over ``i = 0..k`` (``acc_0``: U = 0); higher = better.

    Not CRAFT's C-Insertion (:func:`conceptlens.metrics.craft.c_insertion`, on class scores).

    Parameters
    ----------
    h, U, W, importance, target, images, batch_size
        As in :func:`deletion_curve` (``U [N, *S, k]``, ``W [k, C]``, ``importance [k]``).

    Returns
    -------
    float in [0, 1]
    """
    acc = insertion_curve(h, U, W, importance, target, images=images, batch_size=batch_size)
    k = acc.numel() - 1
    return float(torch.trapezoid(acc) / k)


def c_del(*args: Any, **kwargs: Any) -> float:
    """Deprecated name of :func:`accuracy_deletion` (it collided with CRAFT's ``c_deletion``)."""
    warnings.warn("conceptlens.metrics.c_del is deprecated: use accuracy_deletion (same numbers)",
                  DeprecationWarning, stacklevel=2)
    return accuracy_deletion(*args, **kwargs)


def c_ins(*args: Any, **kwargs: Any) -> float:
    """Deprecated name of :func:`accuracy_insertion` (it collided with CRAFT's ``c_insertion``)."""
    warnings.warn("conceptlens.metrics.c_ins is deprecated: use accuracy_insertion (same numbers)",
                  DeprecationWarning, stacklevel=2)
    return accuracy_insertion(*args, **kwargs)


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
