"""Holistic concept metrics (Fel et al., NeurIPS 2023): attribution metrics applied to the concept codes.

Notation: ``U [N, ..., k]`` concept codes of ``N`` images (``...`` = spatial positions, possibly none),
``D [k, C]`` the concept directions and ``offset [C]`` the decode offset (``decode(U) = U @ D + offset``;
0 for NMF), ``h`` the head (activations ``[B, ..., C]`` → logits ``[B, K]``), ``c`` the target class. The
model of the concepts is

    ``f(m) = h((U ⊙ m) @ D + offset)_c``,    ``m ∈ [0, 1]^k`` one factor per concept (same at every position),

so ``m = 1`` is the image seen through the concepts and ``m_i = 0`` removes concept ``i`` (baseline 0 =
"concept absent"). ``φ`` is an importance, global ``[k]`` or local ``[N, k]`` (larger = more important).
``score`` is the target's logit (default) or its softmax probability.

* **C-Deletion**: remove the concepts one at a time in decreasing ``φ``; the curve is ``f`` after ``t = 0…k``
  removals; AUC = mean of the ``k`` trapezoids (x-axis normalised to 1). **Lower is better.**
* **C-Insertion**: start from every concept removed and restore them in decreasing ``φ``; same AUC.
  **Higher is better.**
* **C-μFidelity**: ``n_subsets`` (200) random subsets, each concept dropped with probability ``p`` (0.2);
  per image, the Spearman correlation between ``Σ_{i dropped} φ_i`` and the drop ``f(1) − f(1 − drop)``.
  **Higher is better.**
* **prevalence / reliability** of each concept: the fraction of images whose dominant concept (largest
  contribution) it is, and the model's accuracy on those images.

Their theory: for a linear ``f`` (a GAP + linear head), Gradient × Input, ``φ_i = u_i ∂f/∂u_i``
(:func:`gradient_input`), is optimal for all three. Pixel insertion/deletion AUCs of any map are in
:func:`conceptlens.metrics.pixels.pixel_auc`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from conceptlens.errors import ActivationError, ParameterError

__all__ = [
    "c_deletion",
    "c_insertion",
    "c_mu_fidelity",
    "holistic",
    "c_deletion_curve",
    "c_insertion_curve",
    "c_mu_fidelity_raw",
    "gradient_input",
    "prevalence_reliability",
    "spearman",
]

Head = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------ helpers
def _check(U: torch.Tensor, D: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor | None:
    if not isinstance(U, torch.Tensor) or U.ndim < 2:
        raise ActivationError(f"U must be concept codes [N, ..., k], got {list(getattr(U, 'shape', []))}")
    if not isinstance(D, torch.Tensor) or D.ndim != 2 or D.shape[0] != U.shape[-1]:
        got = list(getattr(D, "shape", []))
        raise ParameterError(f"W must be the bank [k, C] with k = {U.shape[-1]}, got {got}")
    if importance is None:
        return None
    imp = torch.as_tensor(importance).detach().to(U.device, torch.float64)
    N, k = U.shape[0], U.shape[-1]
    if imp.shape == (k,):
        imp = imp.expand(N, k)
    if imp.shape != (N, k):
        raise ParameterError(f"importance must be [k] = [{k}] (global) or [N, k] = [{N}, {k}] (per image), "
                             f"got {list(imp.shape)}")
    if not bool(torch.isfinite(imp).all()):
        raise ParameterError("importance contains NaN/Inf")
    return imp


def _required(U: torch.Tensor, D: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    imp = _check(U, D, importance)
    if imp is None:
        raise ParameterError("an importance [k] or [N, k] is needed to order the concepts")
    return imp


def _masked_scores(
    U: torch.Tensor,
    D: torch.Tensor,
    h: Head,
    target: int,
    masks: torch.Tensor,
    offset: torch.Tensor | None,
    score: str,
    batch_size: int,
) -> torch.Tensor:
    """``f`` for every image and mask: ``masks [N, T, k]`` → ``[N, T]`` (float64), in batches of rows."""
    lin = _linear_of(h)
    if lin is not None:
        return _masked_scores_linear(U, D, lin, target, masks, offset, score)
    N, T, k = masks.shape
    spatial = tuple(U.shape[1:-1])
    Ur = U.reshape(N, -1, k)
    Dd = D.to(U.dtype)
    out = torch.empty(N * T, dtype=torch.float64)
    flat = masks.to(U.dtype).reshape(N * T, k)
    img = torch.arange(N, device=U.device).repeat_interleave(T)
    with torch.no_grad():
        for s in range(0, N * T, batch_size):
            sl = slice(s, s + batch_size)
            act = (Ur[img[sl]] * flat[sl, None, :]) @ Dd  # [b, P, C]
            if offset is not None:
                act = act + offset.to(act.dtype)
            logits = h(act.reshape(act.shape[0], *spatial, D.shape[1]))
            y = logits.softmax(1)[:, target] if score == "probability" else logits[:, target]
            out[sl] = y.detach().double().cpu()
    return out.reshape(N, T)


def _linear_of(h: Head) -> Any:
    """The exact GAP + linear form ``(weight [K, C], bias [K])`` of ``h`` when ``h`` is a
    :class:`~conceptlens.ModelSplit`'s ``h`` and its head is GAP + linear; else None."""
    split = getattr(h, "__self__", None)
    if split is None or getattr(h, "__func__", None) is not getattr(type(split), "h", None):
        return None  # not a split's own h (a plain callable, a wrapped head, …): evaluate it
    finder = getattr(split, "linear_head", None)
    return finder() if callable(finder) else None


def _masked_scores_linear(
    U: torch.Tensor,
    D: torch.Tensor,
    lin: Any,
    target: int,
    masks: torch.Tensor,
    offset: torch.Tensor | None,
    score: str,
) -> torch.Tensor:
    """:func:`_masked_scores` in closed form for ``h(A) = mean_hw(A) Wᵀ + b``: the mask acts on the mean code,
    ``f = (mean(U) ⊙ m) (D Wᵀ) + offset Wᵀ + b``, so no activation map is ever rebuilt."""
    N, T, k = masks.shape
    w = lin.weight.to(U.device, torch.float64)  # [K, C]
    b = lin.bias.to(U.device, torch.float64)
    ubar = U.reshape(N, -1, k).double().mean(1)  # [N, k]
    base = b if offset is None else b + offset.to(U.device, torch.float64) @ w.T
    m = masks.to(U.device, torch.float64) * ubar[:, None, :]  # [N, T, k]
    if score == "probability":
        logits = m @ (D.to(U.device, torch.float64) @ w.T) + base  # [N, T, K]
        y = logits.softmax(-1)[..., target]
    else:
        y = m @ (D.to(U.device, torch.float64) @ w[target]) + base[target]  # [N, T]
    return y.cpu()


def _ranks(imp: torch.Tensor) -> torch.Tensor:
    """``[N, k]`` rank of each concept (0 = most important); ties keep the concept order."""
    order = torch.argsort(-imp, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(imp.shape[1], device=imp.device).expand_as(order))
    return ranks


def _auc(curve: torch.Tensor) -> torch.Tensor:
    """Mean of the trapezoids of ``curve [N, T]`` with the x-axis scaled to [0, 1] → ``[N]``."""
    return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(1)


def _check_score(score: str) -> None:
    if score not in ("logit", "probability"):
        raise ParameterError(f"score must be 'logit' or 'probability', got {score!r}")


def _curve(U: torch.Tensor, W: torch.Tensor, h: Head, target: int, importance: torch.Tensor, insert: bool,
           offset: torch.Tensor | None, score: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    imp = _required(U, W, importance)
    _check_score(score)
    k = U.shape[-1]
    ranks = _ranks(imp)  # [N, k]
    steps = torch.arange(k + 1, device=U.device)  # t concepts removed (deletion) or restored (insertion)
    first = ranks[:, None, :] < steps[None, :, None]  # [N, k+1, k]: concept among the t most important
    masks = first if insert else ~first
    curve = _masked_scores(U, W, h, target, masks, offset, score, batch_size)
    return _auc(curve), curve


# ------------------------------------------------------------------------------------------------ raw tensors
def c_deletion_curve(
    U: torch.Tensor,
    W: torch.Tensor,
    h: Head,
    target: int,
    importance: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
    score: str = "logit",
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """C-Deletion on plain tensors: ``(auc [N], curve [N, k+1])`` (lower AUC is better).

    Parameters
    ----------
    U
        ``[N, ..., k]`` codes.
    W
        ``[k, C]`` concept directions (``decode(U) = U @ W + offset``).
    h
        Head: activations ``[B, ..., C]`` → logits ``[B, K]``.
    target
        Class ``c``.
    importance
        ``[k]`` global or ``[N, k]`` per image; concepts are removed in decreasing importance (ties: lower
        index first).
    offset
        ``[C]`` decode offset (PCA's mean), or None.
    score
        ``"logit"`` or ``"probability"`` (softmax over the head's classes).
    batch_size
        Rows of ``h`` per call.

    Returns
    -------
    auc : torch.Tensor
        ``[N]`` float64, mean of the trapezoids of the curve, x-axis scaled to [0, 1].
    curve : torch.Tensor
        ``[N, k+1]`` float64, the score after removing ``t = 0…k`` concepts.
    """
    return _curve(U, W, h, target, importance, False, offset, score, batch_size)


def c_insertion_curve(
    U: torch.Tensor,
    W: torch.Tensor,
    h: Head,
    target: int,
    importance: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
    score: str = "logit",
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """C-Insertion on plain tensors: ``(auc [N], curve [N, k+1])`` (higher AUC is better).

    ``curve[:, t]`` is the score with only the ``t`` most important concepts kept (``t = 0``: all removed).
    Parameters as in :func:`c_deletion_curve`.
    """
    return _curve(U, W, h, target, importance, True, offset, score, batch_size)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation along the last axis of ``a, b [..., S]`` (average ranks for ties) → ``[...]``.

    NaN where either side is constant.
    """

    def ranks(x: torch.Tensor) -> torch.Tensor:
        gt = (x[..., :, None] > x[..., None, :]).sum(-1).double()
        eq = (x[..., :, None] == x[..., None, :]).sum(-1).double()
        return gt + (eq - 1) / 2  # 0-based average rank, ascending: x's position among the sorted values

    ra, rb = ranks(a.double()), ranks(b.double())
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    den = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(-1) / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(den, float("nan")))


def c_mu_fidelity_raw(
    U: torch.Tensor,
    W: torch.Tensor,
    h: Head,
    target: int,
    importance: torch.Tensor,
    *,
    n_subsets: int = 200,
    drop_prob: float = 0.2,
    seed: int = 0,
    offset: torch.Tensor | None = None,
    score: str = "logit",
    batch_size: int = 256,
) -> torch.Tensor:
    """C-μFidelity on plain tensors: per-image Spearman correlation ``[N]`` (higher is better).

    The ``n_subsets`` drop masks (each concept dropped with probability ``drop_prob``) are drawn once from a
    seeded generator and shared by all images. NaN for an image whose score or summed importance does not
    vary over the subsets. Other parameters as in :func:`c_deletion_curve`.
    """
    imp = _required(U, W, importance)
    _check_score(score)
    if isinstance(n_subsets, bool) or not isinstance(n_subsets, int) or n_subsets < 2:
        raise ParameterError(f"n_subsets must be an integer ≥ 2, got {n_subsets!r}")
    if not 0.0 < float(drop_prob) < 1.0:
        raise ParameterError(f"drop_prob must be in (0, 1), got {drop_prob!r}")
    N, k = U.shape[0], U.shape[-1]
    gen = torch.Generator().manual_seed(int(seed))
    drop = torch.rand(n_subsets, k, generator=gen, dtype=torch.float64) < drop_prob  # [S, k]
    masks = torch.cat([torch.ones(1, k, dtype=torch.bool), ~drop]).to(U.device)  # row 0: nothing dropped
    y = _masked_scores(U, W, h, target, masks.expand(N, -1, -1), offset, score, batch_size)  # [N, S+1]
    fall = y[:, :1] - y[:, 1:]  # [N, S]
    attr = imp.cpu() @ drop.T.double()  # [N, S]
    return spearman(attr, fall)


def gradient_input(
    U: torch.Tensor,
    W: torch.Tensor,
    h: Head,
    target: int,
    *,
    offset: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Gradient × Input in concept space, ``φ_i(n) = Σ_positions u_i ∂f/∂u_i = ∂f/∂m_i (m = 1)`` → ``[N, k]``.

    For a GAP + linear head it is the concept's contribution ``score_i × weight_i`` exactly.
    """
    _check(U, W, None)
    N, k = U.shape[0], U.shape[-1]
    spatial = tuple(U.shape[1:-1])
    Ur = U.detach().reshape(N, -1, k)
    Dd = W.detach().to(U.dtype)
    out = []
    for s in range(0, N, batch_size):
        m = torch.ones(min(batch_size, N - s), k, dtype=U.dtype, device=U.device, requires_grad=True)
        with torch.enable_grad():
            act = (Ur[s : s + batch_size] * m[:, None, :]) @ Dd
            if offset is not None:
                act = act + offset.to(act.dtype)
            y = h(act.reshape(act.shape[0], *spatial, W.shape[1]))[:, target].sum()
            (g,) = torch.autograd.grad(y, m)
        out.append(g.detach())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ explainer level
def _from_explainer(ex: Any, x: torch.Tensor | None, A: torch.Tensor | None,
                    importance: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                              torch.Tensor]:
    from conceptlens.importance.base import concept_directions

    if getattr(ex, "decomposition_", None) is None:
        from conceptlens.errors import NotFittedError

        raise NotFittedError("holistic metrics need a fitted explainer: call ex.fit(x, target) first")
    if A is None:
        if x is None:
            raise ParameterError("pass the images x (or their activations A)")
        A = ex.activations(x)
    U = ex.decomposition_.encode(A)
    D, offset = concept_directions(ex.decomposition_)
    imp = ex.importance_ if importance is None else importance
    return U, D, (offset if bool(offset.any()) else None), torch.as_tensor(imp)


def c_deletion(ex: Any, x: torch.Tensor | None = None, importance: torch.Tensor | None = None,
               A: torch.Tensor | None = None, *, target: int | None = None, score: str = "logit") -> float:
    """C-Deletion AUC of a fitted explainer on images ``x [N,3,H,W]`` (mean over images; lower is better).

    Parameters
    ----------
    ex
        A fitted :class:`~conceptlens.ConceptExplainer`.
    x
        Images (or pass ``A``).
    importance
        ``[k]`` or ``[N, k]``; default ``ex.importance_``.
    A
        Precomputed ``g(x)``.
    target
        Class (default: the explainer's).
    score
        ``"logit"`` or ``"probability"``.
    """
    U, D, off, imp = _from_explainer(ex, x, A, importance)
    c = ex.target_ if target is None else target
    return float(c_deletion_curve(U, D, ex.split.h, c, imp, offset=off, score=score)[0].mean())


def c_insertion(ex: Any, x: torch.Tensor | None = None, importance: torch.Tensor | None = None,
                A: torch.Tensor | None = None, *, target: int | None = None, score: str = "logit") -> float:
    """C-Insertion AUC of a fitted explainer (mean over images; higher is better). As :func:`c_deletion`."""
    U, D, off, imp = _from_explainer(ex, x, A, importance)
    c = ex.target_ if target is None else target
    return float(c_insertion_curve(U, D, ex.split.h, c, imp, offset=off, score=score)[0].mean())


def c_mu_fidelity(ex: Any, x: torch.Tensor | None = None, importance: torch.Tensor | None = None,
                  A: torch.Tensor | None = None, *, target: int | None = None, n_subsets: int = 200,
                  drop_prob: float = 0.2, seed: int = 0, score: str = "logit") -> float:
    """C-μFidelity of a fitted explainer: mean over images of the Spearman correlation (higher is better).

    Images whose correlation is undefined (constant score or importance over the subsets) are left out;
    NaN when no image has one. Other parameters as in :func:`c_deletion`.
    """
    U, D, off, imp = _from_explainer(ex, x, A, importance)
    c = ex.target_ if target is None else target
    r = c_mu_fidelity_raw(U, D, ex.split.h, c, imp, n_subsets=n_subsets, drop_prob=drop_prob, seed=seed,
                          offset=off, score=score)
    ok = ~torch.isnan(r)
    return float(r[ok].mean()) if bool(ok.any()) else float("nan")


def holistic(ex: Any, x: torch.Tensor | None = None, importance: torch.Tensor | None = None,
             A: torch.Tensor | None = None, *, seed: int = 0) -> dict[str, float]:
    """``{"c_deletion", "c_insertion", "c_mu_fidelity"}`` of a fitted explainer (one encoding pass)."""
    if A is None:
        A = ex.activations(x)
    return {
        "c_deletion": c_deletion(ex, x, importance, A),
        "c_insertion": c_insertion(ex, x, importance, A),
        "c_mu_fidelity": c_mu_fidelity(ex, x, importance, A, seed=seed),
    }


def prevalence_reliability(ex: Any, x: torch.Tensor | None = None,
                           A: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prevalence and reliability of each concept: ``([k], [k])``.

    An image's dominant concept is the one with the largest contribution (``score × weight``) to the target
    logit. Prevalence ``i`` = fraction of images whose dominant concept is ``i``; reliability ``i`` = fraction
    of those images that the model classifies as the target (NaN when there are none).
    """
    from conceptlens.importance.linear import scores

    if A is None:
        A = ex.activations(x)
    contributions = scores(ex.decomposition_.encode(A)) * ex.weights_.to(A.dtype)  # [N, k]
    k = contributions.shape[1]
    dom = contributions.argmax(1).cpu()
    with torch.no_grad():
        right = (ex.split.h(A).argmax(1).cpu() == ex.target_).double()
    count = torch.bincount(dom, minlength=k).double()
    hits = torch.zeros(k, dtype=torch.float64).index_add_(0, dom, right)
    prevalence = count / dom.numel()
    reliability = torch.where(count > 0, hits / count.clamp_min(1), torch.full_like(count, float("nan")))
    return prevalence, reliability
