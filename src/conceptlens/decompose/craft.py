"""CRAFT's concept bank (Fel et al., CVPR 2023): NMF fitted on crops, applied per position.

Notation (as in :mod:`conceptlens.decompose.base`):

=====  ===============  ===========================================================================
``x``  ``[N,3,H,W]``    the class images
``M``                   number of crops cut from them (``data.crops``: ``patch_size``, ``stride``)
``A``  ``[M,h,w,C]``    activations of the crops, each resized to the model's input size
``a``  ``[M, C]``       ``A`` averaged over space: **one row per crop**, what the bank is fitted on
``W``  ``[k, C]``       the concept bank ``components_`` (non-negative, unit rows)
``U``  ``[..., k]``     codes of new activations ``[..., C]``, per position, by NNLS with ``W`` frozen
=====  ===============  ===========================================================================

The decomposition itself is our HALS :class:`~conceptlens.decompose.nmf.NMF`; what makes it CRAFT is
*what* it is fitted on: crops rather than whole images, and a crop is one row (its spatially averaged
activation) rather than ``h·w`` rows. ``fit_on = "crops"`` tells
:class:`~conceptlens.ConceptExplainer` to cut the fit images into crops (``patch_size``, ``stride``) and
to hand the crops' activations to :meth:`CRAFT.fit`; used alone, :meth:`CRAFT.fit` accepts the crops'
activations ``[M, h, w, C]`` (averaged here) or the rows ``[M, C]`` directly. Encoding is unchanged
from NMF: any ``[..., C]`` is encoded row by row (per spatial position for ``[N,h,w,C]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from conceptlens.decompose.base import register
from conceptlens.decompose.nmf import DEFAULT_TOL, NMF
from conceptlens.errors import ActivationError, ImageError, ParameterError
from conceptlens.progress import progress_bar

__all__ = ["CRAFT", "CropSet", "crop_rows", "crop_activations", "crop_images"]


@dataclass(frozen=True, eq=False)
class CropSet:
    """The crops a crop-fitted bank was learnt on (kept by the explainer as ``ex.crops_``).

    Attributes
    ----------
    image_index : torch.Tensor
        ``[M]`` long, the fit image each crop was cut from.
    boxes : torch.Tensor
        ``[M, 4]`` long ``(y0, x0, y1, x1)`` in the pixels of the fit images (``y1``, ``x1`` exclusive).
    scores : torch.Tensor
        ``[M, k]`` each crop's code (NNLS of its spatially averaged activation): prototypes are the crops
        with the highest score.
    predicted : torch.Tensor
        ``[M]`` long, the model's top-1 class on each crop (resized to the input size).
    """

    image_index: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    predicted: torch.Tensor

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def top(self, concept: int, n: int, among: torch.Tensor | None = None) -> torch.Tensor:
        """Ids ``[≤ n]`` of the crops with the highest positive score for ``concept``, best first.

        ``among`` (``[m]`` long crop ids) restricts the search to those crops.
        """
        ids = torch.arange(len(self)) if among is None else among.reshape(-1).long()
        s = self.scores[ids.to(self.scores.device), concept].detach().cpu()
        order = torch.argsort(s, descending=True, stable=True)[: max(int(n), 0)]
        order = order[s[order] > 0]
        return ids.cpu()[order]


def crop_rows(A: torch.Tensor) -> torch.Tensor:
    """One row per crop: ``A [M, ..., C]`` averaged over its middle (spatial/token) axes → ``[M, C]``."""
    if A.ndim <= 2:
        return A
    return A.reshape(A.shape[0], -1, A.shape[-1]).mean(1)


def _check_patch(patch_size: object) -> int | tuple[int, int]:
    pair = isinstance(patch_size, (tuple, list))
    vals = tuple(patch_size) if pair else (patch_size,)  # type: ignore[arg-type]
    if (pair and len(vals) != 2) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ParameterError(
            f"patch_size must be a positive integer or a pair (height, width) of them, got {patch_size!r}"
        )
    return (int(vals[0]), int(vals[1])) if pair else int(vals[0])


def _check_stride(stride: object) -> int | float | None:
    if stride is None:
        return None
    if isinstance(stride, bool) or not isinstance(stride, (int, float)) or not stride > 0:
        raise ParameterError(
            "stride must be None (0.8 × patch), a fraction in (0, 1) of the patch, or pixels ≥ 1; "
            f"got {stride!r}"
        )
    return stride


@register("craft")
class CRAFT(NMF):
    """NMF on crops: the concept bank of CRAFT.

    Parameters
    ----------
    n_concepts : int
        Number of concepts ``k``.
    patch_size : int or (int, int)
        Crop size in pixels of the fit images (any aspect ratio as ``(height, width)``); each crop is
        resized to the images' size before ``g``. CRAFT's default is 64 on 224-pixel images.
    stride : int, float or None
        Step between crops: pixels (≥ 1), a fraction (< 1) of the patch, or None for ``0.8 × patch``.
    seed, tol, max_iter, init, solver, inner_sweeps, progress, verbose
        As in :class:`~conceptlens.decompose.nmf.NMF`.

    Attributes
    ----------
    components_ : Tensor ``[k, C]``
        The concept bank (non-negative, unit rows).
    n_crops_ : int
        Number of crops (rows) the bank was fitted on.

    Examples
    --------
    >>> from conceptlens import data
    >>> crops, image_index, boxes = data.crops(x, 64, out_size=x.shape[-1])
    >>> d = CRAFT(n_concepts=10).fit(split.g(crops))    # [M, h, w, C] → one row per crop
    >>> U = d.encode(split.g(x_new))                    # [N, h, w, 10], per position, ≥ 0
    """

    #: The explainer cuts the fit images into crops for this method.
    fit_on: ClassVar[str] = "crops"
    #: ``importance="auto"`` means Sobol total indices for CRAFT.
    default_importance: ClassVar[str] = "sobol"

    def __init__(
        self,
        n_concepts: int = 10,
        *,
        patch_size: int | tuple[int, int] = 64,
        stride: int | float | None = None,
        tol: float = DEFAULT_TOL,
        max_iter: int = 200,
        seed: int = 0,
        init: str = "nndsvda",
        solver: str = "hals",
        inner_sweeps: int | None = None,
        progress: bool = False,
        verbose: bool = False,
    ) -> None:
        super().__init__(n_concepts, tol=tol, max_iter=max_iter, seed=seed, init=init, solver=solver,
                         inner_sweeps=inner_sweeps, progress=progress, verbose=verbose)
        self.patch_size = _check_patch(patch_size)
        self.stride = _check_stride(stride)

    def fit(self, A: torch.Tensor, layer_name: str | None = None) -> CRAFT:
        """Fit the bank on the crops' activations.

        Parameters
        ----------
        A : Tensor ``[M, h, w, C]`` (or ``[M, T, C]``) or ``[M, C]``
            Activations of ``M`` crops; spatial ones are averaged to one row per crop.
        layer_name : str, optional
            Layer ``A`` comes from (error messages only).

        Returns
        -------
        CRAFT
            ``self``.
        """
        rows = crop_rows(A)
        super().fit(rows, layer_name)
        self.n_crops_ = int(rows.shape[0])
        return self

    def fit_encode(self, A: torch.Tensor, layer_name: str | None = None) -> torch.Tensor:
        """Fit on the crops and return their codes ``[M, k]`` (one row per crop)."""
        rows = crop_rows(A)
        U = super().fit_encode(rows, layer_name)
        self.n_crops_ = int(rows.shape[0])
        return U


def crop_images(x: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor,
                out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Cut given boxes of equal size out of images and resize them (as :func:`~conceptlens.io.images.crops`).

    Parameters
    ----------
    x
        ``[N, C, H, W]`` images.
    image_index
        ``[m]`` long, the image of each crop.
    boxes
        ``[m, 4]`` long ``(y0, x0, y1, x1)``, all of the same height and width.
    out_size
        ``(H', W')`` to resize to (bilinear, antialiased); None keeps the box size.

    Returns
    -------
    torch.Tensor
        ``[m, C, H', W']``.
    """
    boxes = boxes.long().cpu()
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != image_index.numel():
        raise ParameterError(
            f"boxes must be [m, 4] for m = {image_index.numel()} crops, got {list(boxes.shape)}"
        )
    if boxes.shape[0] == 0:
        h, w = out_size if out_size is not None else (0, 0)
        return x.new_zeros(0, x.shape[1], h, w)
    hs, ws = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if bool((hs != hs[0]).any() or (ws != ws[0]).any()):
        raise ParameterError("crop_images needs boxes of one size (one patch size)")
    ph, pw = int(hs[0]), int(ws[0])
    view = x.unfold(2, ph, 1).unfold(3, pw, 1)  # [N, C, H-ph+1, W-pw+1, ph, pw], no copy
    dev = x.device
    # advanced indices separated by a slice: the result is [m, C, ph, pw]
    out = view[image_index.long().to(dev), :, boxes[:, 0].to(dev), boxes[:, 1].to(dev)]
    if out_size is not None and tuple(out_size) != (ph, pw):
        out = torch.nn.functional.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False,
                                              antialias=True)
    return out


def crop_activations(
    split: Any,
    x: torch.Tensor,
    patch_size: int | tuple[int, int] = 64,
    stride: int | float | None = None,
    *,
    crops_per_pass: int = 256,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut images into crops, resize each to the images' size, run ``g`` and average over space.

    Images are processed a few at a time, so that at most about ``crops_per_pass`` crop images and their
    activations exist at once: memory does not grow with the number of fit images.

    Parameters
    ----------
    split
        The :class:`~conceptlens.split.model_split.ModelSplit` (``g``, ``h``).
    x
        ``[N, C, H, W]`` normalised images (any channel count, any aspect ratio).
    patch_size, stride
        As in :func:`conceptlens.io.images.crops`.
    crops_per_pass
        Bound on the crops held in memory at once.
    progress
        Progress bar (None: only on a terminal).

    Returns
    -------
    rows : torch.Tensor
        ``[M, C']`` spatially averaged crop activations (one row per crop).
    image_index : torch.Tensor
        ``[M]`` long.
    boxes : torch.Tensor
        ``[M, 4]`` long.
    predicted : torch.Tensor
        ``[M]`` long, top-1 class of the model on each crop.
    """
    from conceptlens.io import images as data

    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
        raise ImageError(f"expected images [N,C,H,W] with N ≥ 1, got {list(getattr(x, 'shape', []))}")
    size = (int(x.shape[-2]), int(x.shape[-1]))
    rows, idx, bxs, pred = [], [], [], []
    first, _, _ = data.crops(x[:1], patch_size, stride)  # crops per image (cheap: one image, not resized)
    per_image = int(first.shape[0])
    step = max(1, crops_per_pass // per_image)
    for i0 in progress_bar(range(0, x.shape[0], step), desc="crops", enable=progress, min_items=2):
        c, ii, bb = data.crops(x[i0 : i0 + step], patch_size, stride, out_size=size)
        A = split.g(c, progress=False)
        if not torch.isfinite(A).all():
            raise ActivationError(
                f"activations of the crops at layer {split.layer!r} contain NaN/Inf; check the images' "
                "normalisation (cl.data.load_images with the model's preset)"
            )
        with torch.no_grad():
            pred.append(split.h(A).argmax(1).cpu())
        rows.append(crop_rows(A))
        idx.append(ii.cpu() + i0)
        bxs.append(bb.cpu())
    return torch.cat(rows), torch.cat(idx), torch.cat(bxs), torch.cat(pred)
