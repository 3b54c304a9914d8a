"""Pixel metrics of masks and saliency maps: how much of the image is kept, and what the model says then.

Notation
--------
x
    ``[N,3,H,W]`` images, normalised for the classifier ``f`` (logits ``[N,K]``, ``p = softmax(f)``).
y
    ``[N]`` target classes (default: the model's top-1 on ``x``).
m
    ``[N,1,H,W]`` masks (1 = kept pixel), or saliency maps ``s`` (higher = more important); maps of
    another resolution are resized bilinearly to ``H×W``.
r
    a background in the model's normalised space: ``0`` (the dataset mean colour: grey for ImageNet),
    Gaussian noise ``N(0, 1)`` or uniform noise ``U[0, 1)``.

* **kept fraction** ``mean(m)``; **top-1 kept** ``argmax f(m ⊙ x) = y``; **confidence** ``p_y(m ⊙ x)``.
* **background robustness**: the fraction of noise draws ``r`` for which ``argmax f(m ⊙ x + (1 − m) ⊙ r)``
  stays ``y``.
* **pixel deletion / insertion AUC**: pixels are removed from ``x`` (set to ``baseline``), or inserted into
  the baseline image, in decreasing saliency, ties in a seeded random order (so a binary mask removes its
  pixels first, in random order); the curve is ``p_y`` at ``steps + 1`` evenly spaced pixel counts and the
  AUC the mean of its trapezoids (x-axis scaled to [0, 1]). Deletion: lower is better; insertion: higher.
* **binarize_at**: a saliency map cut at a kept fraction, the most salient pixels first (same tie-breaking),
  so that maps and masks can be compared at equal area.

Every function is pure (no state, no gradient); the model is called in batches of ``batch_size`` images.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens._check import check_int
from conceptlens.errors import ParameterError
from conceptlens.split.sites import check_images, forward_chunks, logits_of, resolve_targets

__all__ = ["kept_fraction", "top1_kept", "confidence", "background_robustness", "pixel_deletion_auc",
           "pixel_insertion_auc", "pixel_auc", "binarize_at", "check_masks", "softmax_chunks",
           "pixel_curve", "rank_pixels"]


# --------------------------------------------------------------------------------------------- helpers
def check_masks(masks: torch.Tensor, x: torch.Tensor, what: str = "masks") -> torch.Tensor:
    """``masks [N,1,H,W]`` (or ``[N,H,W]``) in ``x``'s dtype, resized bilinearly to ``x [N,3,H,W]``'s size."""
    if not isinstance(masks, torch.Tensor):
        raise ParameterError(f"{what} must be a tensor [N,1,H,W], got {type(masks).__name__}")
    if masks.ndim == 3:
        masks = masks[:, None]
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != x.shape[0]:
        raise ParameterError(f"{what} must have shape [N,1,H,W] or [N,H,W] with N = {x.shape[0]}, "
                             f"got {list(masks.shape)}")
    if masks.shape[-2:] != x.shape[-2:]:
        masks = F.interpolate(masks.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return masks.to(x.dtype)


def softmax_chunks(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[N,K]`` softmax probabilities of ``x [N,3,H,W]``, in chunks of ``batch_size``, without gradient."""
    return F.softmax(forward_chunks(model, x, batch_size), 1)


def _dummy_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # zeros of the right shape [N, K]: the targets are explicit, only K is needed to check them
    with torch.no_grad():
        k = logits_of(model(x[:1])).shape[1]
    return torch.zeros(x.shape[0], k, device=x.device)


def _targets(model: nn.Module, x: torch.Tensor, target: Any, batch_size: int) -> torch.Tensor:
    logits0 = forward_chunks(model, x, batch_size) if target is None else _dummy_logits(model, x)
    return resolve_targets(model, target, logits0)


def rank_pixels(saliency: torch.Tensor, seed: int) -> torch.Tensor:
    """``[N, P]`` rank of every pixel of ``saliency [N, P]`` (0 = most salient); ties in a seeded order."""
    n, p = saliency.shape
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.rand(n, p, generator=gen).argsort(1).to(saliency.device)  # one random order per image
    shuffled = saliency.gather(1, perm)
    order = perm.gather(1, torch.argsort(shuffled, dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p, device=saliency.device).expand(n, p))
    return ranks


# --------------------------------------------------------------------------------------------- masks
def kept_fraction(masks: torch.Tensor) -> torch.Tensor:
    """``[N]`` fraction of kept pixels (mean of the mask) of ``masks [N,1,H,W]`` (or ``[N,H,W]``)."""
    if masks.ndim == 3:
        masks = masks[:, None]
    return masks.float().mean((1, 2, 3))


def top1_kept(
    model: nn.Module, x: torch.Tensor, masks: torch.Tensor, target: Any = None, *, batch_size: int = 32
) -> torch.Tensor:
    """``[N]`` bool: the model's top-1 on ``masks * x`` is ``target`` (default: its top-1 on ``x``).

    ``x [N,3,H,W]`` normalised images, ``masks [N,1,H,W]`` or ``[N,H,W]``.
    """
    x = check_images(x)
    masks = check_masks(masks, x)
    logits0 = forward_chunks(model, x, batch_size) if target is None else None
    y = resolve_targets(model, target, logits0 if logits0 is not None else _dummy_logits(model, x))
    return forward_chunks(model, masks * x, batch_size).argmax(1) == y


def confidence(
    model: nn.Module, x: torch.Tensor, masks: torch.Tensor, target: Any = None, *, batch_size: int = 32
) -> torch.Tensor:
    """``[N]`` softmax probability of ``target`` (default: top-1 on ``x``) on ``masks * x``.

    ``x [N,3,H,W]`` normalised images, ``masks [N,1,H,W]`` or ``[N,H,W]``.
    """
    x = check_images(x)
    masks = check_masks(masks, x)
    y = _targets(model, x, target, batch_size)
    return softmax_chunks(model, masks * x, batch_size).gather(1, y[:, None])[:, 0]


def background_robustness(
    model: nn.Module,
    x: torch.Tensor,
    masks: torch.Tensor,
    target: Any = None,
    *,
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Does the target stay top-1 when the removed pixels are filled with noise?

    Parameters
    ----------
    model, x, masks, target
        As in :func:`top1_kept`; the composite is ``masks * x + (1 − masks) * r``.
    draws
        Noise draws per background and image.
    seed
        Seeds the noise.
    batch_size
        Images per forward pass.

    Returns
    -------
    dict
        ``{"zero": [N], "gaussian": [N], "uniform": [N]}``: fraction of draws that keep the target top-1
        (``zero`` is 0 or 1). Gaussian noise is ``N(0, 1)`` and uniform noise ``U[0, 1)``, both in the
        model's normalised space (as in the abductive term of the minimal masks).
    """
    x = check_images(x)
    masks = check_masks(masks, x)
    check_int("draws", draws, 1)
    y = _targets(model, x, target, batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    shape = (draws, n, *x.shape[1:])
    gauss = torch.randn(shape, generator=gen).to(x.device, x.dtype)
    unif = torch.rand(shape, generator=gen).to(x.device, x.dtype)
    out = {"zero": (forward_chunks(model, masks * x, batch_size).argmax(1) == y).float()}
    for name, r in (("gaussian", gauss), ("uniform", unif)):
        comp = (masks * x)[None] + (1 - masks)[None] * r
        pred = forward_chunks(model, comp.reshape(-1, *x.shape[1:]), batch_size).argmax(1).reshape(draws, n)
        out[name] = (pred == y[None]).float().mean(0)
    return out


# --------------------------------------------------------------------------------------------- curves
def pixel_curve(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: Any,
    steps: int,
    insert: bool,
    baseline: float,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The AUC ``[N]`` and the curve ``[N, steps+1]`` of pixel deletion (``insert=False``) or insertion.

    See :func:`pixel_deletion_auc` for the arguments.
    """
    x = check_images(x)
    check_int("steps", steps, 1)
    sal = check_masks(saliency, x, "saliency")
    n, _, H, W = x.shape
    p = H * W
    y = _targets(model, x, target, batch_size)
    ranks = rank_pixels(sal.reshape(n, p), seed).reshape(n, 1, 1, H, W)
    counts = torch.round(torch.linspace(0, p, steps + 1, device=x.device)).long()  # pixels changed
    # images in chunks so that one chunk's curve images fit a few batches
    per = max(1, (4 * batch_size) // (steps + 1))
    curves = []
    for i in range(0, n, per):
        first = (ranks[i: i + per] < counts.view(1, -1, 1, 1, 1)).to(x.dtype)  # [c, steps+1, 1, H, W]
        keep = first if insert else 1 - first
        xs = x[i: i + per, None] * keep + baseline * (1 - keep)
        c = xs.shape[0]
        probs = softmax_chunks(model, xs.reshape(-1, *x.shape[1:]), batch_size).reshape(c, steps + 1, -1)
        curves.append(probs.gather(2, y[i: i + per].view(c, 1, 1).expand(c, steps + 1, 1))[..., 0])
    curve = torch.cat(curves)
    auc = ((curve[:, 1:] + curve[:, :-1]) / 2).mean(1)
    return auc, curve


def pixel_deletion_auc(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: Any = None,
    *,
    steps: int = 20,
    baseline: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    return_curve: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pixel deletion AUC (lower is better): delete pixels by decreasing saliency, track p(target).

    Parameters
    ----------
    model
        Classifier (logits ``[N,K]``; the curve uses their softmax).
    x
        ``[N,3,H,W]`` normalised images.
    saliency
        ``[N,1,H,W]`` or ``[N,H,W]`` (resized bilinearly when it has another resolution); ties are broken in
        a seeded random order (a binary mask thus removes its pixels first, in random order).
    target
        Classes (default: top-1 on ``x``).
    steps
        The curve has ``steps + 1`` points, at ``round(k/steps · H·W)`` removed pixels, ``k = 0…steps``.
    baseline
        Value of a removed pixel in normalised space (0 = the dataset mean colour).
    batch_size
        Images per forward pass.
    seed
        Seeds the tie-breaking.
    return_curve
        Also return the curve ``[N, steps+1]``.

    Returns
    -------
    torch.Tensor
        ``[N]`` area under the curve, the mean of the trapezoids with the x-axis scaled to [0, 1].
    """
    auc, curve = pixel_curve(model, x, saliency, target, steps, False, baseline, batch_size, seed)
    return (auc, curve) if return_curve else auc


def pixel_insertion_auc(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: Any = None,
    *,
    steps: int = 20,
    baseline: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    return_curve: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pixel insertion AUC (higher is better): from the baseline, insert pixels by decreasing saliency.

    Same parameters and return value (``[N]``, and the curve ``[N, steps+1]`` with ``return_curve``) as
    :func:`pixel_deletion_auc`.
    """
    auc, curve = pixel_curve(model, x, saliency, target, steps, True, baseline, batch_size, seed)
    return (auc, curve) if return_curve else auc


def pixel_auc(
    model: torch.nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: Any = None,
    *,
    kind: str = "deletion",
    steps: int = 20,
    baseline: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """Pixel deletion / insertion AUC of maps ``[N, m, H, W]`` (``m = 1`` or one per concept) → ``[N, m]``.

    Each map is scored separately with :func:`pixel_deletion_auc` / :func:`pixel_insertion_auc` (pixels
    removed or inserted in decreasing map value; the curve is the target's softmax probability; deletion:
    lower is better, insertion: higher is better).

    Parameters
    ----------
    model
        The classifier (``model(x)`` → logits).
    x
        ``[N,3,H,W]`` normalised images.
    maps
        ``[N, m, H, W]`` or ``[N, H, W]``.
    target
        Class index, ``[N]`` classes, or None (top-1 on ``x``).
    kind
        ``"deletion"`` or ``"insertion"``.
    steps, baseline, batch_size, seed
        As in :func:`pixel_deletion_auc`.

    Returns
    -------
    torch.Tensor
        ``[N, m]`` one AUC per image and map.
    """
    if kind not in ("deletion", "insertion"):
        raise ParameterError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[0] != x.shape[0]:
        raise ParameterError(f"maps must be [N, m, H, W] with N = {x.shape[0]}, got {list(maps.shape)}")
    fn = pixel_deletion_auc if kind == "deletion" else pixel_insertion_auc
    cols = [fn(model, x, maps[:, j : j + 1], target, steps=steps, baseline=baseline, batch_size=batch_size,
               seed=seed) for j in range(maps.shape[1])]  # one map per concept at a time bounds the memory
    return torch.stack([torch.as_tensor(c) for c in cols], 1)


def binarize_at(saliency: torch.Tensor, fraction: torch.Tensor | float, *, seed: int = 0) -> torch.Tensor:
    """Keep the most salient ``round(fraction · H·W)`` pixels of every map.

    Parameters
    ----------
    saliency
        ``[N,1,H,W]`` or ``[N,H,W]``.
    fraction
        ``[N]`` or a float in [0, 1]: kept fraction per image.
    seed
        Ties broken in a seeded random order.

    Returns
    -------
    torch.Tensor
        ``[N,1,H,W]`` binary masks with exactly the requested number of pixels.
    """
    if saliency.ndim == 3:
        saliency = saliency[:, None]
    n, _, H, W = saliency.shape
    frac = torch.as_tensor(fraction, dtype=torch.float32, device=saliency.device).expand(n)
    if bool(((frac < 0) | (frac > 1)).any()):
        raise ParameterError("kept fractions must be in [0, 1]")
    k = torch.round(frac * H * W).long()
    ranks = rank_pixels(saliency.reshape(n, -1).float(), seed)
    return (ranks < k[:, None]).float().reshape(n, 1, H, W)
