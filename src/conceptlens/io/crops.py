"""Crops: grids of patches that cover images, the crops' activations, and the record of a crop fit.

Notation: ``x [N,C,H,W]`` images, ``M`` crops cut from them, ``ph × pw`` the patch size, ``sy, sx`` the
strides, ``boxes [M,4]`` each crop's ``(y0, x0, y1, x1)`` in the pixels of ``x`` (``y1``, ``x1``
exclusive), ``image_index [M]`` the image each crop comes from. CRAFT (seed 003) fits its concept bank on
one spatially averaged activation row per crop: :func:`crop_activations` computes those rows a few images
at a time (memory does not grow with the number of images) through any object with ``g`` and ``h``
(a :class:`~conceptlens.split.ModelSplit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conceptlens._check import check_int
from conceptlens.errors import ActivationError, ImageError, ParameterError
from conceptlens.io.presets import Preset
from conceptlens.io.samples import sample_images
from conceptlens.progress import progress_bar

__all__ = ["crops", "demo_set", "CropSet", "crop_rows", "crop_images", "crop_activations",
           "stream_crop_activations", "grid_size", "border_patches", "channels_last_model",
           "BORDER_AUTO_MAX_EXTRA", "CPU_CROP_BATCH"]


def _pair(name: str, v: int | tuple[int, int]) -> tuple[int, int]:
    t = (v, v) if not isinstance(v, (tuple, list)) else tuple(v)
    if len(t) != 2 or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 1 for a in t):
        raise ParameterError(f"{name} must be a positive integer or a pair of them, got {v!r}.")
    return int(t[0]), int(t[1])


def _stride_for(p: int, stride: int | float | None) -> int:
    if stride is None:
        return max(1, round(0.8 * p))
    if isinstance(stride, bool) or not isinstance(stride, (int, float, np.integer, np.floating)):
        raise ParameterError(
            f"stride must be a number (pixels, or a fraction < 1 of the patch), got {stride!r}."
        )
    if not math.isfinite(stride) or stride <= 0:
        raise ParameterError(f"stride must be > 0, got {stride!r}.")
    if stride < 1:
        return max(1, round(stride * p))
    return max(1, round(stride))


#: Crops per forward pass on the CPU: EfficientNet-Lite0 on 64 crops (2 cores, channels-last) took 1.11 s in
#: batches of 16, 1.43 s in 32 and 1.74 s in 64 (smaller batches keep a layer's output in cache).
CPU_CROP_BATCH = 16

#: ``border="auto"`` keeps the border-aligned patches only while they add at most this share of crops.
BORDER_AUTO_MAX_EXTRA = 0.25


def _starts(length: int, p: int, s: int, border: bool = True) -> torch.Tensor:
    starts = list(range(0, length - p + 1, s))
    if border and starts[-1] + p < length:
        starts.append(length - p)  # the last patch sits on the border so that the whole image is covered
    return torch.tensor(starts, dtype=torch.long)


def border_patches(size: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int],
                   border: bool | str) -> bool:
    """Whether the grid gets the border-aligned patches: ``border`` resolved for one image size.

    ``True`` / ``False`` as given; ``"auto"``: only when they add at most 25 % crops
    (:data:`BORDER_AUTO_MAX_EXTRA`) to the regular grid. E.g. 224-px images, patch 64, stride 51: the
    regular grid has 4 × 4 = 16 patches and the border-aligned ones make it 5 × 5 = 25 (+56 %), so
    ``"auto"`` leaves them out (as the peers' unfold grid does) and 7 pixels of the right and bottom
    border are in no crop.
    """
    if isinstance(border, bool):
        return border
    if border != "auto":
        raise ParameterError(f"border must be True, False or 'auto', got {border!r}")
    n_reg = [len(_starts(L, p, s, False)) for L, p, s in zip(size, patch, stride, strict=True)]
    n_all = [len(_starts(L, p, s, True)) for L, p, s in zip(size, patch, stride, strict=True)]
    return n_all[0] * n_all[1] <= (1 + BORDER_AUTO_MAX_EXTRA) * n_reg[0] * n_reg[1]


def _grid(size: tuple[int, int], patch_size: int | tuple[int, int], stride: int | float | None,
          border: bool | str) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """``(ph, pw, ys, xs)``: the patch size and the patch origins along each axis, validated."""
    ph, pw = _pair("patch_size", patch_size)
    H, W = size
    if ph > H or pw > W:
        raise ParameterError(
            f"patch_size {ph}×{pw} is larger than the images ({H}×{W}); use a patch_size ≤ {min(H, W)} "
            "or larger images."
        )
    sy, sx = _stride_for(ph, stride), _stride_for(pw, stride)
    b = border_patches(size, (ph, pw), (sy, sx), border)
    return ph, pw, _starts(H, ph, sy, b), _starts(W, pw, sx, b)


def grid_size(size: tuple[int, int], patch_size: int | tuple[int, int] = 64,
              stride: int | float | None = None, border: bool | str = True) -> int:
    """Number of crops :func:`crops` cuts from one image of ``size = (H, W)`` pixels with these settings.

    E.g. ``grid_size((224, 224), 64)`` is 25, ``grid_size((224, 224), 64, border="auto")`` 16 (the
    border-aligned patches would add 56 %).
    """
    _, _, ys, xs = _grid(size, patch_size, stride, border)
    return len(ys) * len(xs)


def crops(
    x: torch.Tensor,
    patch_size: int | tuple[int, int] = 64,
    stride: int | float | None = None,
    out_size: int | None = None,
    *,
    batch_size: int = 256,
    border: bool | str = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut every image into overlapping patches, optionally resized for the model.

    Patch origins along an axis of length ``L`` are ``0, s, 2s, …`` and, with ``border``, when that leaves
    a strip uncovered, one more at ``L − p`` (aligned to the border, so that the patches cover the image).
    Extraction is one strided view (``Tensor.unfold``) indexed at the chosen origins: no per-patch Python
    loop.

    Parameters
    ----------
    x
        ``[N, C, H, W]`` images (normalised or not: values are copied as they are).
    patch_size
        ``p`` or ``(ph, pw)`` in pixels; must fit in ``H × W``.
    stride
        Step between patch origins: an int (pixels), a float < 1 (fraction of the patch), a float ≥ 1
        (pixels, rounded), or ``None`` for ``0.8 × patch`` (the peers' default).
    out_size
        Resize each patch to ``out_size × out_size`` (bilinear, antialiased), e.g. ``preset.size``;
        ``None`` keeps ``ph × pw``.
    batch_size
        Patches gathered and resized at a time (bounds the memory of the intermediate copy).
    border
        Add the border-aligned patches: True (the patches cover the whole image), False (the regular
        grid only, as the peers' ``unfold``), or ``"auto"`` (only when they add at most 25 % crops; see
        :func:`border_patches`).

    Returns
    -------
    patches : torch.Tensor
        ``[M, C, out, out]`` (or ``[M, C, ph, pw]``); image-major, then row-major over positions.
    image_index : torch.Tensor
        ``[M]`` long, the image each patch comes from.
    boxes : torch.Tensor
        ``[M, 4]`` long ``(y0, x0, y1, x1)`` in the pixels of ``x`` (``y1``, ``x1`` exclusive).

    Raises
    ------
    ParameterError
        A patch larger than the images, a non-positive size or stride, an unknown ``border``, or ``x``
        not ``[N, C, H, W]``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ParameterError(f"crops expects images [N,C,H,W], got {shape}.")
    N, C, H, W = x.shape
    ph, pw, ys, xs = _grid((H, W), patch_size, stride, border)
    if out_size is not None:
        out_h, out_w = _pair("out_size", out_size)
    else:
        out_h, out_w = ph, pw
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}.")
    dev = x.device
    ys, xs = ys.to(dev), xs.to(dev)
    ny, nx = len(ys), len(xs)
    M = N * ny * nx

    image_index = torch.arange(N, device=dev).repeat_interleave(ny * nx)
    iy = torch.arange(ny, device=dev).repeat_interleave(nx).repeat(N)
    ix = torch.arange(nx, device=dev).repeat(N * ny)
    y0, x0 = ys[iy], xs[ix]
    boxes = torch.stack([y0, x0, y0 + ph, x0 + pw], dim=1)

    # [N, C, H-ph+1, W-pw+1, ph, pw]: every possible patch, as a view (no copy until indexed).
    view = x.unfold(2, ph, 1).unfold(3, pw, 1)
    resize = (out_h, out_w) != (ph, pw)
    out = torch.empty((M, C, out_h, out_w), dtype=x.dtype, device=dev)
    for b in range(0, M, batch_size):
        sl = slice(b, b + batch_size)
        # Advanced indices separated by a slice: result dims are [b, C, ph, pw].
        chunk = view[image_index[sl], :, y0[sl], x0[sl]]
        if resize:
            chunk = F.interpolate(
                chunk, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
            )
        out[sl] = chunk
    return out, image_index, boxes


def demo_set(
    preset: Preset | None = None, *, patch_size: int = 112, stride: int | float | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The demo's images: crops of every bundled sample photo, resized to the model's input.

    Parameters
    ----------
    preset
        The model's preset (size, normalisation).
    patch_size, stride
        Crop geometry in pixels of the ``preset.size`` photos (stride default 0.8 × patch).

    Returns
    -------
    tuple
        ``x [M,3,S,S]`` normalised crops and their names (``"chelsea crop 3"``).
    """
    photos, names = sample_images(preset, return_names=True)
    size = photos.shape[-1]
    x, idx, _ = crops(photos, patch_size=patch_size, stride=stride, out_size=size)
    return x, [f"{names[int(i)]} crop {j}" for j, i in enumerate(idx)]


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


def crop_images(x: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor,
                out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Cut given boxes of equal size out of images and resize them (as :func:`crops`).

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
    border: bool | str = "auto",
    crops_per_pass: int = 256,
    batch_size: int | None = None,
    channels_last: bool = True,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut images into crops, resize each to the images' size, run ``g`` and average over space.

    Images are processed a few at a time, so that at most about ``crops_per_pass`` crop images and their
    activations exist at once: memory does not grow with the number of fit images. Each pass cuts its
    crops in one indexed view, runs ``g`` on them in ``batch_size`` batches and ``h`` once (the crops'
    top-1 classes), all under ``torch.inference_mode`` and, on the CPU, with the crops and the model's
    4-d weights channels-last (:func:`channels_last_model`) in batches of :data:`CPU_CROP_BATCH`: on
    EfficientNet-Lite0 (2 cores) 1.9× the throughput of ``model(x)`` in the split's batches of 32 with the
    contiguous layout (``conceptlens bench craft``); the numbers are the same up to rounding.

    Parameters
    ----------
    split
        The :class:`~conceptlens.split.model_split.ModelSplit` (``g``, ``h``).
    x
        ``[N, C, H, W]`` normalised images (any channel count, any aspect ratio).
    patch_size, stride
        As in :func:`crops`.
    border
        The border-aligned crops (:func:`crops`): ``"auto"`` (default) adds them only when they add at most
        25 % crops; e.g. not for 224-px images, patch 64 (16 crops per image instead of 25).
    crops_per_pass
        Bound on the crops held in memory at once.
    batch_size
        Crops per forward pass of ``g`` (default: :data:`CPU_CROP_BATCH` = 16 on the CPU, the split's
        ``batch_size`` elsewhere).
    channels_last
        Run the pass channels-last on the CPU (the model's weights are converted for the pass and restored
        after it); False keeps the model as it is.
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
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
        raise ImageError(f"expected images [N,C,H,W] with N ≥ 1, got {list(getattr(x, 'shape', []))}")
    crops_per_pass = check_int("crops_per_pass", crops_per_pass, 1, hint="e.g. 256 crops per pass")
    size = (int(x.shape[-2]), int(x.shape[-1]))
    per_image = grid_size(size, patch_size, stride, border)
    step = max(1, crops_per_pass // per_image)
    on_cpu = x.device.type == "cpu"
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1, hint="crops per forward pass, e.g. 16")
    bs = batch_size or (CPU_CROP_BATCH if on_cpu else getattr(split, "batch_size", 32))
    rows, idx, bxs, pred = [], [], [], []
    with channels_last_model(split, channels_last and on_cpu) as layout:
        for i0 in progress_bar(range(0, x.shape[0], step), desc="crops", enable=progress, min_items=2):
            with torch.inference_mode():
                c, ii, bb = crops(x[i0 : i0 + step], patch_size, stride, out_size=size, border=border)
                A = split.g(c.contiguous(memory_format=layout), batch_size=bs, progress=False)
                if not torch.isfinite(A).all():
                    raise ActivationError(
                        f"activations of the crops at layer {split.layer!r} contain NaN/Inf; check the "
                        "images' normalisation (cl.data.load_images with the model's preset)"
                    )
                pred.append(split.h(A).argmax(1).cpu())
                rows.append(crop_rows(A))
            idx.append(ii.cpu() + i0)
            bxs.append(bb.cpu())
    # outside inference mode: torch.cat makes ordinary tensors, which the fit may update in place
    return torch.cat(rows), torch.cat(idx), torch.cat(bxs), torch.cat(pred)


@contextmanager
def channels_last_model(split: Any, on: bool = True) -> Iterator[torch.memory_format]:
    """The model's 4-d weights channels-last for the block (``on``), restored to contiguous after it.

    Yields the memory format to give the inputs (``torch.channels_last`` or ``torch.contiguous_format``).
    Only parameters and buffers that were contiguous 4-d tensors are converted and restored, so a model
    that was already channels-last, or has other layouts, is left as it was.
    """
    model = getattr(split, "model", None)
    if not on or not isinstance(model, torch.nn.Module):
        yield torch.contiguous_format
        return
    changed = []
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.ndim == 4 and t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last):
                t.data = t.data.contiguous(memory_format=torch.channels_last)
                changed.append(t)
    try:
        yield torch.channels_last
    finally:
        with torch.no_grad():
            for t in changed:
                t.data = t.data.contiguous()


def stream_crop_activations(
    split: Any,
    batches: Iterable[torch.Tensor],
    patch_size: int | tuple[int, int] = 64,
    stride: int | float | None = None,
    *,
    sink: Callable[[torch.Tensor], None],
    border: bool | str = "auto",
    crops_per_pass: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`crop_activations` over a stream of image batches: crops are cut and run per batch of images.

    Parameters
    ----------
    split
        The model split (``g``, ``h``).
    batches
        Image batches ``[b, C, H, W]`` of one size (e.g. ``ImageSource.batches()`` without labels).
    patch_size, stride, border, crops_per_pass
        As in :func:`crop_activations`.
    sink
        Receives each batch's crop rows ``[m_b, C']`` (e.g. ``RowBuffer.append``: memory or a store), so
        that the rows of all crops are never held here.

    Returns
    -------
    image_index : torch.Tensor
        ``[M]`` long, positions in the stream.
    boxes : torch.Tensor
        ``[M, 4]`` long.
    predicted : torch.Tensor
        ``[M]`` long.
    """
    idx, bxs, pred, start = [], [], [], 0
    for xb in batches:
        rows, ii, bb, pp = crop_activations(split, xb, patch_size, stride, border=border,
                                            crops_per_pass=crops_per_pass, progress=False)
        sink(rows)
        idx.append(ii + start)
        bxs.append(bb)
        pred.append(pp)
        start += int(xb.shape[0])
    if not idx:
        raise ImageError("no images to cut crops from")
    return torch.cat(idx), torch.cat(bxs), torch.cat(pred)
