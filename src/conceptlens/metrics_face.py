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
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import ParameterError, TargetError

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
    """Fit FACE for each ``λ`` and measure it with FACE's metrics (the paper's table, one row per ``λ``).

    The concept ranking of each fit is its global Sobol total-index importance for ``target``
    (:func:`conceptlens.importance.sobol.concept_total_indices`, ``n_designs`` designs) on the class's
    correctly classified images, which are also the images C-Ins, C-Del and the accuracy are measured on.
    Metrics use the coefficients found by the fit (as the authors do).

    Parameters
    ----------
    A : Tensor ``[N, *S, C]``
        Non-negative activations.
    head : callable
        ``[B, *S, C] → [B, K]`` (``ModelSplit.h``).
    target : int or sequence of int
        Class ``c``, or several: the class-dependent numbers (accuracy, C-Ins, C-Del, C-Gini) are then
        the mean over the classes, each measured on its own correctly classified images.
    kl_weights : sequence of float
        The ``λ`` values (``0`` = NMF).
    n_concepts : int
        ``k``.
    seed : int
        Seed of the fits and of the Sobol design.
    with_stability : bool
        Also measure stability (5 more fits per ``λ``).
    n_designs : int
        Sobol design size.
    batch_size : int
        Images per head call in the metrics.
    progress : bool
        Print one line per ``λ`` as it finishes.
    **face_params
        Passed to :class:`~conceptlens.decompose.face.FACE` (e.g. ``max_iter``, ``tol``, ``solver``).

    Returns
    -------
    list of dict
        Per ``λ``: ``kl_weight``, ``mse``, ``kl``, ``total``, ``accuracy`` (fit codes), ``accuracy_encoded``
        (codes from ``encode(A)``), ``agreement`` (top-1 of ``h(Â)`` = top-1 of ``h(A)`` over *all* images),
        ``c_ins``, ``c_del``, ``c_gini``, ``sparsity``, ``stability`` (NaN
        unless requested), ``time`` (fit seconds), ``n_iter``, ``n_images`` (the class's images).
    """
    from .decompose.face import FACE
    from .importance.sobol import concept_total_indices

    try:
        targets = [operator.index(target)]  # type: ignore[arg-type]
    except TypeError:
        targets = [operator.index(t) for t in target]  # type: ignore[union-attr]
    if not targets:
        raise TargetError("no target class given; pass a class index or a list of them")
    pred = predictions(head, A, batch_size=batch_size)
    sels = {c: torch.nonzero(pred == c).flatten() for c in targets}
    empty = [c for c, s in sels.items() if s.numel() == 0]
    if empty:
        raise TargetError(
            f"no image is classified as class {empty[0]} by the head; choose images of that class"
        )
    rows = []
    for lam in kl_weights:
        d = FACE(n_concepts=n_concepts, kl_weight=float(lam), head=head, seed=seed, **face_params)
        t0 = time.perf_counter()
        U = d.fit_encode(A)
        elapsed = time.perf_counter() - t0
        W = d.components_
        with torch.no_grad():
            A_hat = U @ W
            U_enc = d.encode(A)
        per_class = []
        for c, sel in sels.items():
            imp = concept_total_indices(U[sel], W, head, c, n_designs=n_designs, seed=seed, n_boot=0,
                                        progress=False).indices
            per_class.append({
                "accuracy": reconstruction_accuracy(head, A, A_hat, c, batch_size=batch_size),
                "accuracy_encoded": reconstruction_accuracy(head, A, U_enc @ W, c, batch_size=batch_size),
                "c_ins": c_ins(head, U, W, imp, c, images=sel, batch_size=batch_size),
                "c_del": c_del(head, U, W, imp, c, images=sel, batch_size=batch_size),
                "c_gini": c_gini(imp),
            })
        mean = {key: sum(r[key] for r in per_class) / len(per_class) for key in per_class[0]}
        row = {
            "kl_weight": float(lam),
            "mse": d.objective_["mse"],
            "kl": d.objective_["kl"],
            "total": d.objective_["total"],
            **mean,
            "agreement": reconstruction_accuracy(head, A, A_hat, None, batch_size=batch_size),
            "sparsity": sparsity(U),
            "stability": math.nan,
            "time": elapsed,
            "n_iter": float(d.n_iter_),
            "n_images": float(sum(int(v.numel()) for v in sels.values())),
        }
        if with_stability:
            params = dict(n_concepts=n_concepts, kl_weight=float(lam), head=head, seed=seed, **face_params)

            def refit(a: torch.Tensor, params: dict[str, Any] = params) -> torch.Tensor:
                return FACE(**params).fit(a).components_

            row["stability"] = stability(refit, A)
        rows.append(row)
        if progress:
            print(format_table([row], header=not rows[:-1]))
    return rows


def format_table(rows: Sequence[dict[str, float]], header: bool = True) -> str:
    """The rows of :func:`sweep` as a fixed-width text table."""
    cols = ["kl_weight", "mse", "kl", "accuracy", "accuracy_encoded", "agreement", "c_ins", "c_del", "c_gini",
            "sparsity", "stability", "time", "n_iter"]
    names = ["λ", "MSE", "KL", "acc", "acc(enc)", "agree(all)", "C-Ins", "C-Del", "C-Gini", "sparsity",
             "stability", "time s", "iters"]
    lines = [" ".join(f"{n:>9}" for n in names)] if header else []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, math.nan)
            cells.append(f"{v:9.3g}" if c in ("kl_weight", "mse", "kl") else
                         f"{int(v):9d}" if c == "n_iter" and math.isfinite(v) else f"{v:9.3f}")
        lines.append(" ".join(cells))
    return "\n".join(lines)
