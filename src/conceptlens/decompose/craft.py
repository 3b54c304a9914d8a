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

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conceptlens.decompose.base import register
from conceptlens.decompose.nmf import DEFAULT_TOL, NMF
from conceptlens.errors import ParameterError
from conceptlens.io.crops import crop_rows

__all__ = ["CRAFT"]


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


def _check_border(border: object) -> bool | str:
    if isinstance(border, bool) or border == "auto":
        return border  # type: ignore[return-value]
    raise ParameterError(f"border must be True, False or 'auto' (the border-aligned crops), got {border!r}")


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
    border : bool or "auto"
        Also cut the border-aligned crops that make the crops cover the whole image (see
        :func:`conceptlens.io.crops.crops`). ``"auto"`` (default): only when they add at most 25 % crops.
        On 224-pixel images with patch 64 (stride 51) they would add 56 % (25 crops per image instead of
        16, the peers' grid), so ``"auto"`` leaves them out and the 7 pixels at the right and bottom
        border are in no crop; ``True`` puts them back.
    seed, tol, max_iter, init, solver, inner_sweeps, progress, verbose, batch_size
        As in :class:`~conceptlens.decompose.nmf.NMF` (``batch_size``: the mini-batch fit, which also reads
        the crop rows from an :class:`~conceptlens.io.store.ActivationStore`).

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

    label = "CRAFT"
    #: The explainer cuts the fit images into crops for this method.
    fit_on: ClassVar[str] = "crops"
    #: ``importance="auto"`` means Sobol total indices for CRAFT.
    default_importance: ClassVar[str | None] = "sobol"
    quick_params: ClassVar[Mapping[str, Any]] = {"max_iter": 100}

    def __init__(
        self,
        n_concepts: int = 10,
        *,
        patch_size: int | tuple[int, int] = 64,
        stride: int | float | None = None,
        border: bool | str = "auto",
        tol: float = DEFAULT_TOL,
        max_iter: int = 200,
        seed: int = 0,
        init: str = "nndsvda",
        solver: str = "hals",
        inner_sweeps: int | None = None,
        progress: bool = False,
        verbose: bool = False,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(n_concepts, tol=tol, max_iter=max_iter, seed=seed, init=init, solver=solver,
                         inner_sweeps=inner_sweeps, progress=progress, verbose=verbose, batch_size=batch_size)
        self.patch_size = _check_patch(patch_size)
        self.stride = _check_stride(stride)
        self.border = _check_border(border)

    def fit(self, A: torch.Tensor | Any, layer_name: str | None = None) -> CRAFT:
        """Fit the bank on the crops' activations.

        Parameters
        ----------
        A : Tensor ``[M, h, w, C]`` (or ``[M, T, C]``) or ``[M, C]``, or an activation store
            Activations of ``M`` crops; spatial ones are averaged to one row per crop. A store holds the
            rows ``[M, C]`` already averaged (:func:`conceptlens.io.crops.crop_activations` per batch of
            images) and is fitted by NMF's mini-batch algorithm.
        layer_name : str, optional
            Layer ``A`` comes from (error messages only).

        Returns
        -------
        CRAFT
            ``self``.
        """
        if not isinstance(A, torch.Tensor) and hasattr(A, "iter_batches"):
            super().fit(A, layer_name)
            self.n_crops_ = len(A)
            return self
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
