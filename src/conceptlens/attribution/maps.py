"""Where each concept is in an image, the direct way: its code map resized to the image.

Notation: ``x [N,3,H,W]`` images, ``U [N,h,w,k]`` the concept codes of their activations (channels last;
``[N,k]`` for a layer without spatial positions), ``score_i`` the spatial mean of ``U_i`` on an image.

:func:`upsample_maps` is the concept map the peers ship: ``U_i`` bilinearly resized from ``h×w`` to ``H×W``.
:mod:`conceptlens.attribution.implicit` gives CRAFT's alternative, by implicit differentiation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample_maps", "spatial_mean"]


def spatial_mean(U: torch.Tensor) -> torch.Tensor:
    """Concept scores ``[N, k]``: the mean of ``U [N, ..., k]`` over its positions (``[N, k]`` as is)."""
    return U.reshape(U.shape[0], -1, U.shape[-1]).mean(1) if U.ndim > 2 else U


def upsample_maps(U: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Coefficient maps ``U [N,h,w,k]`` → ``[N,k,H,W]`` (bilinear); flat ``[N,k]`` become constant maps.

    Parameters
    ----------
    U
        ``[N, h, w, k]`` codes, or ``[N, k]`` (or ``[N, ..., k]``: spatially averaged) for a flat layer.
    size
        ``(H, W)`` of the images.

    Returns
    -------
    torch.Tensor
        ``[N, k, H, W]``.
    """
    if U.ndim == 4:
        return F.interpolate(U.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    s = spatial_mean(U)
    return s[:, :, None, None].expand(*s.shape, *size)
