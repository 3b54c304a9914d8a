"""The objective of the minimal masks (seed 004, arXiv 2509.23051): one value per image, and its terms.

Notation
--------
x
    ``[N,3,H,W]`` images, normalised for the model ``f`` (logits ``[N,K]``); ``y`` ``[N]`` the targets.
up
    ``[N,1,H,W]`` the generator's mask logits upsampled bilinearly to ``H×W``.
m̃ = σ(up − τ)
    the soft mask; ``τ = 0`` on the penalty path, the per-image threshold of the budget (below) otherwise.
m
    the binary mask ``[up ≥ τ]``; in the graph it is ``m + m̃ − sg(m̃)`` (straight-through: the forward pass
    sees the binary mask, the backward pass the sigmoid's gradient).
e = m ⊙ x
    the explanation. *Removed pixels are 0 in the model's normalised space*, i.e. they take the dataset
    mean colour (grey for ImageNet), the same baseline as the pixel deletion / insertion metrics.
φ_ℓ
    the output of call site ``ℓ`` (:mod:`conceptlens.split.sites`), with weights ``α_ℓ`` summing to 1.
r
    a noise background in the model's normalised space: Gaussian ``N(0, 1)`` on even steps, uniform
    ``U[0, 1)`` on odd ones (``torch.randn`` / ``torch.rand``, independent per pixel and channel, one draw
    for every image of the batch).

Objective, summed over images (so that every image's U-Net sees only its own gradient)::

    L = λ_act Σ_ℓ α_ℓ d(φ_ℓ(x), φ_ℓ(e)) + λ_ce CE(f(e), y) + λ_kl KL(softmax(f(x)/T) ‖ softmax(f(e)/T))
        + λ_area,i mean(m̃) + λ_bin mean(m̃ − m̃²) + λ_tv TV(m̃)
        + λ_abd · ½ [CE(f(e), y) + CE(f(m ⊙ x + (1 − m) ⊙ r), y)]
        + λ_nec softplus(f_y(c) − max_{k≠y} f_k(c)),    c = (1 − m) ⊙ x

* ``d`` is the *relative* squared error ``‖φ(x) − φ(e)‖² / ‖φ(x)‖²`` on spatial layers (the MSE divided by
  the mean square of ``φ(x)``, so that one ``λ_act`` suits ReLU and ReLU6 networks alike) and the cosine
  distance ``1 − cos`` on flat layers.
* ``TV(m̃) = mean|∂_h m̃| + mean|∂_w m̃|``.
* The abductive term alternates the two noise backgrounds from step to step, a fresh draw each time; the
  zero background is ``e`` itself and costs nothing extra: one extra forward pass per step instead of three.
* The necessity term is the other half of the paper's abductive constraints: the complement ``c``, the
  image with the *kept* pixels removed, should not keep the class. It is a smooth hinge on the complement's
  top-1 margin (about the margin while the complement still predicts ``y``, → 0 as another class wins
  clearly), so it stops pulling once the class is lost instead of driving ``p_y(c)`` to 0. It costs one
  more image per row in the step's forward pass; ``λ_nec = 0`` removes it (and the complement from the
  batch).
* ``λ_area,i`` is scheduled by the optimisation (:mod:`conceptlens.attribution.masks.optimise`). On the
  budget path the area term is replaced by a constraint: image ``i``'s binary mask is exactly the top
  ``b_i`` fraction of its pixels by logit, ``τ_i`` the ``(1 − b_i)`` quantile of ``up``.

Default weights (:data:`DEFAULT_WEIGHTS`) are the authors' notebook values: λ_act 10, λ_ce 15, λ_kl 5 with
T = 2, λ_area 100, λ_bin 1, λ_tv 500, λ_abd 100; λ_nec 10 is ours (the notebook has no necessity term).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens.split.sites import CallSite, capture, logits_of

__all__ = ["DEFAULT_WEIGHTS", "act_distance", "noise_background", "binary_mask", "mask_loss", "reference",
           "top1_margin", "independent_backgrounds", "INDEPENDENT_SEED_OFFSET"]

#: The loss weights of the authors' notebook (``T`` is the KL temperature).
DEFAULT_WEIGHTS: dict[str, float] = {
    "act": 10.0,
    "ce": 15.0,
    "kl": 5.0,
    "T": 2.0,
    "area": 100.0,
    "bin": 1.0,
    "tv": 500.0,
    "abductive": 100.0,
    "necessity": 10.0,
}

#: The independent noise backgrounds that judge a returned mask are drawn from ``seed + this``; the search
#: draws its own from ``seed + 1`` (training), ``seed + 3`` (selection) and ``seed + 5`` (refinement).
INDEPENDENT_SEED_OFFSET = 1_000_003


def act_distance(a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``[n]`` distance of outputs ``a`` to references ``r`` (both ``[n, ...]``).

    The relative squared error for spatial / token outputs (``ndim > 2``), the cosine distance for flat ones.
    """
    n = a.shape[0]
    if a.ndim <= 2:
        return 1 - F.cosine_similarity(a.reshape(n, -1), r.reshape(n, -1), dim=1, eps=1e-8)
    num = (a - r).pow(2).reshape(n, -1).mean(1)
    den = r.pow(2).reshape(n, -1).mean(1).clamp_min(1e-12)
    return num / den


def noise_background(step: int, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[1,3,H,W]`` the noise background of ``step``: ``N(0, 1)`` when even, ``U[0, 1)`` when odd.

    Drawn on the CPU from ``gen`` (so the draws do not depend on the device), then moved to ``x``'s.
    """
    shape = (1, *x.shape[1:])
    if step % 2 == 0:
        return torch.randn(shape, generator=gen).to(device=x.device, dtype=x.dtype)
    return torch.rand(shape, generator=gen).to(device=x.device, dtype=x.dtype)


def independent_backgrounds(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``[2,1,3,H,W]`` one Gaussian and one uniform background, independent of every draw of the search.

    Drawn like :func:`noise_background` (kinds 0 and 1) from a generator seeded ``seed +``
    :data:`INDEPENDENT_SEED_OFFSET`, so that a mask selected on the search's backgrounds is judged on others.
    """
    gen = torch.Generator().manual_seed(int(seed) + INDEPENDENT_SEED_OFFSET)
    return torch.stack([noise_background(kind, x, gen) for kind in (0, 1)])


def top1_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n]`` ``logits_y − max_{k≠y} logits_k`` of ``logits [n,K]``: > 0 exactly when ``y`` is top-1."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return z_y - other


def binary_mask(
    up: torch.Tensor, budget: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft and binary masks of the upsampled logits ``up [n,1,H,W]``.

    Parameters
    ----------
    up
        ``[n,1,H,W]`` mask logits at the image's size.
    budget
        ``[n]`` kept fractions (NaN: the row is area-penalised instead, threshold 0), or None (all
        penalised).

    Returns
    -------
    tuple
        ``soft [n,1,H,W]`` (``σ(up − τ)``), ``hard [n,1,H,W]`` (``up − τ ≥ 0`` as 0 / 1), ``rank
        [n,1,H,W]`` (``up − τ``: the pixel ranking the binary mask is cut from) and ``penalised [n]`` (1
        where the area term applies, 0 on budgeted rows).
    """
    n = up.shape[0]
    penalised = torch.ones(n, device=up.device, dtype=up.dtype)
    if budget is not None:
        # rows with a budget keep their top budget_i pixels: threshold at the budget's quantile;
        # rows with a NaN budget are area-penalised and keep threshold 0 (σ > 0.5)
        on = ~torch.isnan(budget)
        flat = up.detach().reshape(n, -1)
        k = (budget.nan_to_num(1.0) * flat.shape[1]).ceil().long().clamp(1, flat.shape[1])
        tau = flat.sort(1, descending=True).values.gather(1, (k - 1)[:, None])[:, 0]
        up = up - torch.where(on, tau, torch.zeros_like(tau))[:, None, None, None]
        penalised = (~on).to(up.dtype)
    soft = torch.sigmoid(up)
    hard = (up >= 0).to(soft.dtype)
    return soft, hard, up, penalised


def mask_loss(
    model: nn.Module,
    generator: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ref: Mapping[str, torch.Tensor],
    p_ref: torch.Tensor,
    sites: Sequence[CallSite],
    layers: Mapping[str, float],
    weights: Mapping[str, float],
    area_w: float | torch.Tensor,
    noise: torch.Tensor | None,
    budget: torch.Tensor | None = None,
    forward: Callable[[torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The objective ``L`` per image, for the masks ``generator`` proposes for ``x``.

    Parameters
    ----------
    model
        The classifier ``f``.
    generator
        Images ``[n,3,H,W]`` → mask logits ``[n,1,d,d]``.
    x, y
        ``[n,3,H,W]`` images and ``[n]`` targets.
    ref
        ``{site: φ_ℓ(x)}`` the reference outputs at the matched sites (:func:`reference`).
    p_ref
        ``[n,K]`` ``softmax(f(x) / T)``.
    sites, layers
        The matched call sites and their weights ``{site name: α_ℓ}``.
    weights
        The loss weights (keys of :data:`DEFAULT_WEIGHTS`).
    area_w
        ``λ_area,i``: a number or ``[n]``.
    noise
        ``[1,3,H,W]`` this step's noise background (None: no abductive term).
    budget
        ``[n]`` kept fractions of the budgeted rows (NaN on penalised rows), or None.
    forward
        ``(batch, rows) -> (logits, {site: output of the first rows images})`` in place of ``model``
        with hooks on ``sites`` (the search passes a
        :class:`~conceptlens.attribution.masks.parallel.SplitForward`); None: the plain call.

    Returns
    -------
    tuple
        ``loss [n]``, the weighted terms ``{name: [n]}``, the binary mask ``[n,1,H,W]``, the logits
        ``{"e": [n,K]}`` plus ``"noise"`` (the noise composite, when ``noise`` is given) and
        ``"complement"`` (``(1 − m) ⊙ x``, when ``λ_nec > 0``), and the ranking ``[n,1,H,W]`` (the binary
        mask is ``ranking ≥ 0``); all but the loss and terms detached.
    """
    w = weights
    n, _, H, W = x.shape
    up = F.interpolate(generator(x), size=(H, W), mode="bilinear", align_corners=False)
    soft, hard, up, penalised = binary_mask(up, budget)
    m = hard + soft - soft.detach()
    e = m * x
    parts = {"e": e}
    if noise is not None:
        parts["noise"] = e + (1 - m) * noise
    if w["necessity"] > 0:
        parts["complement"] = (1 - m) * x
    batch = torch.cat(list(parts.values())) if len(parts) > 1 else e
    if forward is None:
        with capture(model, sites) as acts:
            out = logits_of(model(batch))
    else:
        out, acts = forward(batch, n)
    outs = dict(zip(parts, out.split(n), strict=True))
    logits = outs["e"]
    terms: dict[str, torch.Tensor] = {}
    ce_e = F.cross_entropy(logits, y, reduction="none")
    terms["ce"] = w["ce"] * ce_e
    if w["kl"] > 0:
        log_q = F.log_softmax(logits / w["T"], 1)
        terms["kl"] = w["kl"] * (p_ref * (torch.log(p_ref.clamp_min(1e-12)) - log_q)).sum(1)
    if w["act"] > 0 and layers:
        act = torch.zeros(n, device=x.device, dtype=x.dtype)
        for name, alpha in layers.items():
            act = act + alpha * act_distance(acts[name][:n], ref[name])
        terms["act"] = w["act"] * act
    terms["area"] = penalised * area_w * soft.mean((1, 2, 3))
    if w["bin"] > 0:
        terms["bin"] = w["bin"] * (soft - soft * soft).mean((1, 2, 3))
    if w["tv"] > 0:
        tv = (soft[..., 1:, :] - soft[..., :-1, :]).abs().mean((1, 2, 3))
        tv = tv + (soft[..., :, 1:] - soft[..., :, :-1]).abs().mean((1, 2, 3))
        terms["tv"] = w["tv"] * tv
    if noise is not None:
        ce_r = F.cross_entropy(outs["noise"], y, reduction="none")
        terms["abductive"] = w["abductive"] * 0.5 * (ce_e + ce_r)
    if "complement" in outs:
        terms["necessity"] = w["necessity"] * F.softplus(top1_margin(outs["complement"], y))
    loss = torch.stack(list(terms.values())).sum(0)
    return loss, terms, hard.detach(), {k: v.detach() for k, v in outs.items()}, up.detach()


def reference(
    model: nn.Module, x: torch.Tensor, sites: Sequence[CallSite]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({site: φ_ℓ(x)}, logits [n,K])`` of the images ``x [n,3,H,W]``, without gradient."""
    with torch.no_grad(), capture(model, sites) as acts:
        logits = logits_of(model(x))
        ref = {k: v.detach() for k, v in acts.items()}
    return ref, logits
