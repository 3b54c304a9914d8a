"""Images in: files, folders, globs, arrays, tensors and offline sample photos; presets; crops.

Notation
--------
N
    number of images.
S
    the model's input size (``preset.size``): every loaded image is ``S × S``.
H, W
    height and width of an image before resizing (or of the images given to :func:`crops`).
x
    a batch of images ``[N, 3, H, W]``; *in [0, 1]* before normalisation, ``(x01 − mean) / std`` after.
M
    number of crops cut by :func:`crops`; ``ph × pw`` is the patch size, ``sy, sx`` the strides.

Every image goes through the same steps: decode to 8-bit RGB (:func:`load_pil`, which also handles
grey, alpha, palette, 16-bit, CMYK and EXIF rotation), scale to [0, 1] (:func:`to_tensor01`), resize so
that the shorter side is ``S`` and centre-crop ``S × S`` (bilinear with antialiasing, the same geometry as
torchvision's ``Resize(S)`` + ``CenterCrop(S)``), then normalise with the preset's mean and std.
"""

from __future__ import annotations

import functools
import glob as _glob
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from conceptlens.errors import ImageError, ParameterError
from conceptlens.io._guards import (
    DEFAULT_MAX_PIXELS,
    channels_first,
    check_max_pixels,
    check_pixels,
    check_png_data,
    int_dtype_error,
    pil_limits,
)
from conceptlens.io.presets import DEFAULT_PRESET, Preset

__all__ = [
    "Preset",
    "DEFAULT_PRESET",
    "IMAGE_EXTENSIONS",
    "load_images",
    "load_pil",
    "to_tensor01",
    "resize_center_crop",
    "batched",
    "list_image_files",
    "DEFAULT_MAX_PIXELS",
]

#: File extensions (lower case) that a folder or a glob is searched for.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# --------------------------------------------------------------------------------------------- decoding
def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey → 8-bit RGB by rescaling (Pillow's own convert clips at 255)."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a8 = a.astype(np.float64) / 257.0  # 65535 / 257 = 255: the full 16-bit range maps to 8 bits
    else:
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        # Mode "I"/"F" carries no bit depth: use the smallest standard range that holds the data.
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            a8 = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            a8 = a
        elif lo >= 0.0 and hi <= 65535.0:
            a8 = a / 257.0
        else:
            a8 = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        a8 = np.nan_to_num(a8, nan=0.0, posinf=255.0, neginf=0.0)
    a8 = np.clip(np.rint(a8), 0, 255).astype(np.uint8)
    return Image.fromarray(a8).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB: alpha composited over white, 16-bit rescaled, palette expanded."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        return _composite_on_white(img)
    if mode == "P":
        if "transparency" in img.info:
            return _composite_on_white(img)
        return img.convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _wide_to_rgb(img)
    # L, 1, CMYK, YCbCr, RGBX, HSV, LAB: Pillow converts these to RGB itself.
    return img.convert("RGB")


def _decode(img: Image.Image) -> Image.Image:
    img.load()  # Image.open is lazy: force the decode so that a truncated file fails here
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not lose an otherwise good image
        pass
    return _to_rgb(img)


def load_pil(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read one image file as 8-bit RGB, whatever its mode.

    Grey (``L``, ``1``), ``LA``/``RGBA``/``PA`` (alpha composited over white), palette ``P`` (with its
    transparency), 16-bit ``I;16*`` and 32-bit ``I``/``F`` (rescaled to 8 bits, not clipped), ``CMYK``
    and EXIF-rotated files (rotated upright) all come back as ``RGB``. Multi-frame files give their
    first frame.

    Parameters
    ----------
    path
        Path of the image file.
    max_pixels
        Largest ``W × H`` accepted, read from the file's header before anything is decoded (None: no limit).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, size ``(W, H)`` after EXIF rotation.

    Raises
    ------
    ImageError
        If the file does not exist, announces more than ``max_pixels`` pixels, is truncated (also a PNG
        whose compressed data ends early, which Pillow would decode as black) or cannot be decoded.
    """
    max_pixels = check_max_pixels(max_pixels)
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image file {str(p)!r} does not exist (or is not a file).")
    try:
        with pil_limits(), Image.open(p) as im:
            check_pixels(im, p, max_pixels)  # Image.open only read the header: nothing decoded yet
            if im.format == "PNG":
                check_png_data(p)
            out = _decode(im)
            # Detach from the file handle that the ``with`` closes.
            return out.copy() if out is im else out
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, ValueError…)
        raise ImageError(f"cannot read image {str(p)!r}: {type(e).__name__}: {e}") from e


def to_tensor01(img: Image.Image | np.ndarray) -> torch.Tensor:
    """An image as a float tensor in [0, 1].

    Parameters
    ----------
    img
        A PIL image (any mode, converted as in :func:`load_pil`) or a numpy array ``[H, W]``,
        ``[H, W, 1|3|4]`` (``uint8``, or float in [0, 1]; a 4th channel is alpha, composited over white).

    Returns
    -------
    torch.Tensor
        ``[3, H, W]`` float32 in [0, 1], on the CPU.
    """
    if isinstance(img, Image.Image):
        arr = np.array(_to_rgb(img), dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
    if isinstance(img, np.ndarray):
        return _array_to_tensor01(img)
    raise ImageError(f"to_tensor01 expects a PIL image or a numpy array, got {type(img).__name__}.")


def _array_to_tensor01(a: np.ndarray) -> torch.Tensor:
    if a.ndim == 3 and a.shape[2] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # channels first [C,H,W]: unambiguous when the last axis cannot be C
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(
            f"a numpy image must be [H,W], [H,W,1], [H,W,3] or [H,W,4] (channels last), got shape {a.shape}."
        )
    if a.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
    elif a.dtype == np.bool_:
        t = torch.from_numpy(a.astype(np.float32))
    elif np.issubdtype(a.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if not bool(torch.isfinite(t).all()) or t.min() < 0 or t.max() > 1:
            raise ImageError(
                "a float numpy image must hold values in [0, 1]; "
                "pass uint8 (0-255) or divide by the maximum first."
            )
    else:
        raise ImageError(f"a numpy image must be uint8 (or float in [0, 1]), got dtype {a.dtype}; convert "
                         "it first: a.astype(np.uint8) for 0–255 pixels, a.astype(np.float32) for values in "
                         "[0, 1].")
    t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        rgb, alpha = t[:3], t[3:]
        t = rgb * alpha + (1.0 - alpha)  # over white, as for RGBA files
    return t.contiguous()


# --------------------------------------------------------------------------------------------- geometry
def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the shorter side is ``size``, then centre-crop ``size × size``.

    Bilinear with antialiasing; the output geometry is that of torchvision's ``Resize(size)`` followed by
    ``CenterCrop(size)`` so that results match the usual ImageNet preprocessing.

    Parameters
    ----------
    x
        ``[N, C, H, W]`` or ``[C, H, W]`` float images.
    size
        Output side ``S``.

    Returns
    -------
    torch.Tensor
        ``[N, C, S, S]`` (or ``[C, S, S]``), same device and dtype.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ParameterError(f"size must be a positive integer, got {size!r}.")
    size = int(size)
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(0)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < 1 or w < 1:
        raise ImageError(f"cannot resize an empty image of size {h}×{w}.")
    if (h, w) != (size, size):
        short, long = (h, w) if h <= w else (w, h)
        new_long = max(size, int(size * long / short))
        nh, nw = (size, new_long) if h <= w else (new_long, size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        x = x[..., top : top + size, left : left + size]
    x = x.clamp(0.0, 1.0) if x.is_floating_point() else x
    return x.squeeze(0) if squeeze else x.contiguous()


# --------------------------------------------------------------------------------------------- sources
_GLOB_CHARS = set("*?[")


def _ext_list() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _is_image_file(p: Path) -> bool:
    # Hidden files (e.g. macOS "._photo.jpg" resource forks) are not images even with an image suffix.
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted((p for p in it if _is_image_file(p)), key=lambda p: str(p))
    if not files:
        how = "or its subfolders " if recursive else ""
        hint = "" if recursive else " (use recursive=True to look into subfolders)"
        raise ImageError(
            f"folder {str(folder)!r} {how}contains no image files; "
            f"supported extensions (any case): {_ext_list()}{hint}."
        )
    return files


def _glob_files(pattern: str, recursive: bool) -> list[Path]:
    files = sorted(
        (Path(m) for m in _glob.glob(pattern, recursive=recursive) if _is_image_file(Path(m))),
        key=lambda p: str(p),
    )
    if not files:
        raise ImageError(
            f"the pattern {pattern!r} matches no image file; supported extensions (any case): {_ext_list()}."
        )
    return files


def list_image_files(source: str | Path | list[Any] | tuple[Any, ...], recursive: bool = False) -> list[Path]:
    """The image files a path, folder, glob or list of them names, in :func:`load_images`' order.

    Parameters
    ----------
    source
        A file, a folder, a glob pattern, or a list of these.
    recursive
        Look into subfolders (and let ``**`` match across folders).

    Returns
    -------
    list[Path]
        ``N`` files, none decoded. ImageError for a missing path or a folder / pattern without images.
    """
    items: list[_Item] = []
    for s in source if isinstance(source, (list, tuple)) else [source]:
        if not isinstance(s, (str, Path)):
            raise ImageError(f"expected paths, got a {type(s).__name__} in the list")
        _expand(s, recursive, items, [0], [])
    if not items:
        raise ImageError("no images given (the list of paths is empty).")
    return [p for p, _ in items if isinstance(p, Path)]


# One "item" is a file path to decode later, or a [3,H,W] / [N,3,H,W] tensor in [0,1] with its names.
_Item = tuple[Path | torch.Tensor, list[str]]


def _tensor_source(t: torch.Tensor, name: str) -> _Item:
    t = channels_first(t)  # [N,C,H,W], C in (1, 3): grey and channels-last converted, the rest refused
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == torch.bool:
        t = t.float()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # antialiased interpolation is not implemented for half types on every device
    elif not t.is_floating_point():
        raise int_dtype_error(t.dtype, tuple(t.shape))
    elif t.numel() and (not bool(torch.isfinite(t).all()) or t.min() < 0 or t.max() > 1):
        raise ImageError(
            f"an image tensor must hold values in [0, 1] (found [{float(t.min()):.3g}, "
            f"{float(t.max()):.3g}]); pass un-normalised images, e.g. preset.denormalize(x)."
        )
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t, [f"<{name}:{i}>" for i in range(t.shape[0])]


def _expand(
    source: Any, recursive: bool, out: list[_Item], counter: list[int], devices: list[torch.device]
) -> None:
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            out.extend((f, [str(f)]) for f in _folder_files(p, recursive))
        elif p.is_file():
            out.append((p, [str(p)]))
        elif isinstance(source, str) and _GLOB_CHARS & set(source):
            out.extend((f, [str(f)]) for f in _glob_files(source, recursive))
        else:
            raise ImageError(
                f"path {str(source)!r} does not exist (give a file, a folder or a glob pattern)."
            )
    elif isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or f"<pil:{counter[0]}>"
        counter[0] += 1
        out.append((to_tensor01(source), [name]))
    elif isinstance(source, np.ndarray):
        if source.ndim == 4:  # a stack of HWC images
            ts = [_array_to_tensor01(a) for a in source]
            t = torch.stack(ts) if ts else torch.empty(0, 3, 1, 1)
            out.append((t, [f"<array:{counter[0] + i}>" for i in range(len(ts))]))
            counter[0] += len(ts)
        else:
            out.append((_array_to_tensor01(source), [f"<array:{counter[0]}>"]))
            counter[0] += 1
    elif isinstance(source, torch.Tensor):
        t, names = _tensor_source(source.detach(), "tensor")
        devices.append(t.device)
        names = [f"<tensor:{counter[0] + i}>" for i in range(len(names))]
        counter[0] += len(names)
        out.append((t, names))
    elif isinstance(source, (list, tuple)):
        for s in source:
            _expand(s, recursive, out, counter, devices)
    else:
        raise ImageError(
            f"cannot load images from a {type(source).__name__}; give a path, a folder, a glob pattern, "
            "a PIL image, a numpy uint8 [H,W,3] array, a tensor [N,3,H,W] in [0,1], or a list of these."
        )


def _progress_bar(total: int, progress: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    # progress=None: show only on a terminal (tqdm's own rule for disable=None).
    disable = None if progress is None else not progress
    return tqdm(total=total, desc=desc, disable=disable, unit="img", file=sys.stderr, leave=False)


@overload
def load_images(
    source: Any,
    preset: Preset | None = ...,
    *,
    size: int | None = ...,
    recursive: bool = ...,
    progress: bool | None = ...,
    return_paths: Literal[False] = ...,
    max_pixels: int | None = ...,
) -> torch.Tensor: ...


@overload
def load_images(
    source: Any,
    preset: Preset | None = ...,
    *,
    size: int | None = ...,
    recursive: bool = ...,
    progress: bool | None = ...,
    return_paths: Literal[True],
    max_pixels: int | None = ...,
) -> tuple[torch.Tensor, list[str]]: ...


def load_images(
    source: Any,
    preset: Preset | None = None,
    *,
    size: int | None = None,
    recursive: bool = False,
    progress: bool | None = None,
    return_paths: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """Load images from almost anything, resized to ``S × S`` and normalised for a model.

    Parameters
    ----------
    source
        A file path; a folder (every file with a supported extension, any case, sorted by path; hidden
        files skipped); a glob pattern such as ``"photos/*.jpg"``; a PIL image; a numpy ``uint8`` array
        ``[H, W]``, ``[H, W, 3|4]`` or a stack ``[N, H, W, 3]``; a tensor ``[N, 3, H, W]`` or
        ``[3, H, W]`` with values in [0, 1] (or ``uint8``); or a list mixing any of these.
    preset
        Size, mean and std to use (e.g. ``model.preset``); ImageNet statistics at 224 if ``None``.
    size
        Overrides ``preset.size``.
    recursive
        Look into subfolders of folders (and let ``**`` in glob patterns match across folders).
    progress
        Show a progress bar while decoding files: ``None`` = only on a terminal.
    return_paths
        Also return one name per image: its path, or ``"<pil:i>"``, ``"<array:i>"``, ``"<tensor:i>"``.
    max_pixels
        Largest ``W × H`` of an image file, checked from its header before decoding (None: no limit); a
        larger file is skipped with a warning like any unreadable one.

    Returns
    -------
    torch.Tensor
        ``[N, 3, S, S]`` float, ``(x01 − mean) / std``. On the device of the first tensor in ``source``
        (CPU if there is none); float32 unless a floating tensor of another dtype was given.
    list[str]
        Only with ``return_paths=True``: the ``N`` names, in the same order.

    Raises
    ------
    ImageError
        A path that does not exist, a folder or pattern without images, an unsupported input type, or
        no readable image at all. A file that cannot be decoded (or is truncated, or over ``max_pixels``)
        is skipped with a warning naming it. Integer tensors other than uint8 are refused (0–255 or 0/1?);
        grey ``[N,1,H,W]`` and channels-last ``[N,H,W,3]`` tensors are converted.
    """
    max_pixels = check_max_pixels(max_pixels)
    preset = DEFAULT_PRESET if preset is None else preset
    if not isinstance(preset, Preset):
        raise ParameterError(
            f"preset must be a conceptlens.data.Preset or None, got {type(preset).__name__}."
        )
    S = preset.size if size is None else size
    if isinstance(S, bool) or not isinstance(S, (int, np.integer)) or S < 1:
        raise ParameterError(f"size must be a positive integer, got {S!r}.")
    S = int(S)

    items: list[_Item] = []
    devices: list[torch.device] = []
    _expand(source, recursive, items, [0], devices)
    if not items:
        raise ImageError("no images given (the source is an empty list).")
    device = devices[0] if devices else torch.device("cpu")
    tried: list[str] = []
    parts: list[torch.Tensor] = []
    names: list[str] = []
    n_files = sum(isinstance(it, Path) for it, _ in items)
    bar = _progress_bar(n_files, progress, "loading images") if n_files else None
    try:
        for it, nm in items:
            if isinstance(it, Path):
                tried.append(str(it))
                try:
                    img = load_pil(it, max_pixels=max_pixels)
                except ImageError as e:
                    warnings.warn(f"skipping unreadable image {str(it)!r}: {e}", stacklevel=2)
                    continue
                finally:
                    if bar is not None:
                        bar.update(1)
                t = to_tensor01(img).unsqueeze(0)
            else:
                t = it if it.ndim == 4 else it.unsqueeze(0)
            if t.shape[0] == 0:
                continue
            parts.append(resize_center_crop(t, S).to(device))
            names.extend(nm)
    finally:
        if bar is not None:
            bar.close()

    if not parts:
        if tried:
            shown = ", ".join(repr(p) for p in tried[:10]) + (
                f" and {len(tried) - 10} more" if len(tried) > 10 else ""
            )
            raise ImageError(
                f"none of the {len(tried)} image file(s) could be read: {shown}. "
                f"Check that they are valid images ({_ext_list()})."
            )
        raise ImageError("no images given (the tensors or arrays are empty).")
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in parts))
    x = preset.normalize(torch.cat([p.to(dtype) for p in parts], dim=0))
    return (x, names) if return_paths else x


def batched(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices ``x[i : i + batch_size]`` along the first dimension (views, no copy).

    Parameters
    ----------
    x
        ``[N, ...]``.
    batch_size
        Positive size of each slice (the last one may be shorter).

    Yields
    ------
    torch.Tensor
        ``[b, ...]`` with ``b ≤ batch_size``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}.")
    for i in range(0, x.shape[0], int(batch_size)):
        yield x[i : i + int(batch_size)]
