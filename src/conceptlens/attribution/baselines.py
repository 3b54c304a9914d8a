"""Saliency baselines computed by conceptlens itself: occlusion and Grad-CAM.

Notation
--------
x
    ``[N,3,H,W]`` images, normalised for the model ``f`` (logits ``[N,K]``).
y
    ``[N]`` target classes (default: the model's top-1 on ``x``).
A
    ``[N,h,w,C]`` activations (channels-last) at the Grad-CAM layer; ``f(x) = h(A)``.
saliency
    ``[N,1,H,W]``: higher = more important for ``y``.

Occlusion (Zeiler & Fergus): slide a ``patch × patch`` square of ``baseline`` values over the image with
``stride``; a pixel's saliency is the mean, over the squares that cover it, of the drop in the target's
softmax probability ``p_y(x) − p_y(x with the square occluded)``. Every occluded copy of every image is
batched (in chunks of ``batch_size``); the squares always reach the right and bottom borders.

Grad-CAM (Selvaraju et al.): ``α_c = mean_hw ∂f_y/∂A[..., c]`` (gradient of the target *logit*),
``cam = ReLU(Σ_c α_c A[..., c])`` upsampled bilinearly to ``H×W`` and divided by its maximum per image
(maps that are zero everywhere stay zero). For a global-average-pool + linear head ``α_c = w_yc / (h·w)``, so
Grad-CAM equals CAM up to that normalisation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens._check import check_int
from conceptlens.errors import LayerError, ParameterError
from conceptlens.split.model_split import ModelSplit
from conceptlens.split.sites import (
    check_images,
    check_target_length,
    forward_chunks,
    resolve_targets,
    slice_target,
)

__all__ = ["occlusion", "grad_cam"]


def _positions(size: int, patch: int, stride: int) -> list[int]:
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)  # cover the border too
    return pos


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    *,
    patch: int | None = None,
    stride: int | None = None,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 32,
) -> torch.Tensor:
    """Occlusion saliency: the drop of the target's probability when a square is replaced by ``baseline``.

    Parameters
    ----------
    model
        Classifier ``f(x) -> logits [N,K]``.
    x
        ``[N,3,H,W]`` normalised images.
    target
        Classes: None (top-1), one index / name, or one per image.
    patch
        Side of the occluding square in pixels (default ``round(min(H, W) / 7)``, 32 at 224²).
    stride
        Step between squares (default ``patch // 2``).
    baseline
        Occlusion value in normalised space: a float (0 = the dataset mean colour) or a tensor broadcastable
        to ``[N,3,H,W]``.
    batch_size
        Occluded images per forward pass.

    Returns
    -------
    torch.Tensor
        ``[N,1,H,W]`` saliency (probability drop; may be negative where occlusion helps the target).
    """
    x = check_images(x)
    check_target_length(target, x.shape[0])
    n, c, H, W = x.shape
    patch = max(1, round(min(H, W) / 7)) if patch is None else patch
    stride = max(1, patch // 2) if stride is None else stride
    patch, stride = check_int("patch", patch, 1), check_int("stride", stride, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    if patch > min(H, W):
        raise ParameterError(
            f"patch ({patch}) is larger than the images ({H}×{W}); choose patch ≤ {min(H, W)}"
        )
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        base = base.expand(n, c, H, W)
    except RuntimeError as exc:
        raise ParameterError(
            f"baseline of shape {list(base.shape)} does not broadcast to {list(x.shape)}"
        ) from exc
    logits0 = forward_chunks(model, x, batch_size)
    y = resolve_targets(model, target, logits0)
    p0 = F.softmax(logits0, 1).gather(1, y[:, None])[:, 0]
    ys, xs = _positions(H, patch, stride), _positions(W, patch, stride)
    squares = torch.zeros(len(ys) * len(xs), 1, H, W, dtype=x.dtype, device=x.device)
    for k, (i, j) in enumerate((i, j) for i in ys for j in xs):
        squares[k, :, i: i + patch, j: j + patch] = 1
    P = squares.shape[0]
    img = torch.arange(n, device=x.device).repeat_interleave(P)
    pos = torch.arange(P, device=x.device).repeat(n)
    drops = torch.empty(n * P, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for s in range(0, n * P, batch_size):
            ii, pp = img[s: s + batch_size], pos[s: s + batch_size]
            sq = squares[pp]
            occluded = x[ii] * (1 - sq) + base[ii] * sq
            prob = F.softmax(forward_chunks(model, occluded, batch_size), 1)
            drops[s: s + batch_size] = p0[ii] - prob.gather(1, y[ii][:, None])[:, 0]
    flat = squares.reshape(P, H * W)
    sal = drops.reshape(n, P) @ flat / flat.sum(0).clamp_min(1)
    return sal.reshape(n, 1, H, W)


def grad_cam(
    model: nn.Module | ModelSplit,
    x: torch.Tensor,
    target: Any = None,
    layer: str | nn.Module = "auto",
    *,
    batch_size: int = 32,
) -> torch.Tensor:
    """Grad-CAM at one layer, upsampled to the image size.

    Parameters
    ----------
    model
        Classifier, or a :class:`~conceptlens.ModelSplit` (used as is when ``layer`` is ``"auto"`` or its own
        layer; building a split traces the model, so pass one when calling repeatedly).
    x
        ``[N,3,H,W]`` normalised images.
    target
        Classes: None (top-1), one index / name, or one per image.
    layer
        ``"auto"`` (the last spatial call site, after the head's activation), a call-site name or a module.
    batch_size
        Images per forward / backward pass.

    Returns
    -------
    torch.Tensor
        ``[N,1,H,W]`` in [0, 1] (each map divided by its maximum).
    """
    x = check_images(x)
    check_target_length(target, x.shape[0])
    if isinstance(model, ModelSplit):
        split = model if layer in ("auto", model.layer) else ModelSplit(model.model, layer)
    else:
        split = ModelSplit(model, layer)
    if len(split.activation_shape) != 3:
        raise LayerError(
            f"Grad-CAM needs a spatial layer ([h, w, C] activations); {split.layer!r} gives "
            f"{list(split.activation_shape)}. Use layer='auto' or a convolutional stage"
        )
    maps = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s: s + batch_size]
        A = split.g(xb, progress=False).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = split.h(A)
            yb = resolve_targets(split.model, slice_target(target, s, xb.shape[0]), logits.detach())
            score = logits.gather(1, yb[:, None]).sum()
            # autograd.grad (not backward): no gradient lands in the model's parameters
            (grad,) = torch.autograd.grad(score, A)
        alpha = grad.mean((1, 2))  # [n, C]
        cam = F.relu(torch.einsum("nhwc,nc->nhw", A.detach(), alpha))
        maps.append(cam[:, None])
    cam = torch.cat(maps)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    peak = cam.amax((1, 2, 3), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp_min(1e-12), cam)

