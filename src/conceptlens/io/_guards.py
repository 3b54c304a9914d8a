"""Guards where images enter: a pixel limit read from the header, truncated data, tensor layouts.

Notation: ``N`` images, ``H × W`` pixels, ``C`` channels (1 = grey, 3 = RGB).

* :func:`pil_limits` sets Pillow's own limits (``Image.MAX_IMAGE_PIXELS``,
  ``ImageFile.LOAD_TRUNCATED_IMAGES``) for one decode and restores them
  afterwards: no global state is changed for good.
* :func:`check_pixels` refuses an image whose header announces more than ``max_pixels`` pixels, before
  anything is decoded (a 97 KB PNG of 10,000 × 10,000 would otherwise cost 1.8 GB).
* :func:`check_png_data` counts the bytes of a PNG's compressed stream: a complete zlib stream that holds
  fewer rows than the header announces is decoded by Pillow as a black image without any error.
* :func:`channels_first` turns the unambiguous tensor layouts (grey ``[N,1,H,W]``, channels-last
  ``[N,H,W,3]``) into ``[N,3,H,W]`` and refuses the rest, naming the shape expected.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFile

from conceptlens._check import check_int
from conceptlens.errors import ImageError

__all__ = ["DEFAULT_MAX_PIXELS", "check_max_pixels", "pil_limits", "check_pixels", "check_png_data",
           "channels_first", "int_dtype_error"]

#: Default largest image (pixels per image, ``W × H``) that is decoded: 50 M, e.g. 8,660 × 5,773.
DEFAULT_MAX_PIXELS = 50_000_000

# PNG colour type → samples per pixel.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_max_pixels(max_pixels: Any) -> int | None:
    """``max_pixels`` as a positive ``int``, or None (no limit); else a ParameterError."""
    if max_pixels is None:
        return None
    return check_int("max_pixels", max_pixels, 1, hint="pixels per image (W × H), or None for no limit")


@contextlib.contextmanager
def pil_limits() -> Iterator[None]:
    """Within the block, Pillow refuses truncated files and leaves the pixel limit to :func:`check_pixels`
    (``max_pixels``); both settings are restored afterwards (also when a user had set
    ``LOAD_TRUNCATED_IMAGES = True``)."""
    old_pixels, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        # Pillow warns (and past 2× raises) in Image.open from its own MAX_IMAGE_PIXELS: our check, run right
        # after open and before any decoding, replaces it and names the argument to change.
        Image.MAX_IMAGE_PIXELS = None
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_pixels, old_truncated


def check_pixels(img: Image.Image, path: Path, max_pixels: int | None) -> None:
    """ImageError when the header of ``img`` (opened, not decoded) announces more than ``max_pixels``."""
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"image {str(path)!r} is {w} × {h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(max_pixels); pass a larger max_pixels (or None) to load_images / load_pil if you trust it"
        )


def _png_expected_bytes(w: int, h: int, bit_depth: int, colour: int, interlace: int) -> int:
    bits = _PNG_SAMPLES.get(colour, 4) * bit_depth
    if not interlace:
        return h * (1 + (w * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
        if pw > 0 and ph > 0:
            total += ph * (1 + (pw * bits + 7) // 8)
    return total


def check_png_data(path: Path) -> None:
    """ImageError when the PNG at ``path`` holds less image data than its header announces.

    Inflates the ``IDAT`` stream in bounded chunks (memory stays small) and counts the bytes; called after
    :func:`check_pixels`, so that the count never runs over an image that is too large anyway.
    """
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return
        expected = None
        z = zlib.decompressobj()
        got = 0
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, cid = struct.unpack(">I4s", head)
            if cid == b"IHDR":
                data = f.read(length)
                if len(data) < 13:
                    return  # Pillow reports a malformed header itself
                w, h, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", data[:13])
                expected = _png_expected_bytes(w, h, depth, colour, interlace)
                f.seek(4, 1)
                continue
            if cid == b"IDAT":
                data = f.read(length)
                while data and not z.eof:
                    got += len(z.decompress(data, 1 << 20))
                    data = z.unconsumed_tail
                f.seek(4, 1)
                continue
            if cid == b"IEND":
                break
            f.seek(length + 4, 1)
    if expected is not None and got < expected:
        raise ImageError(
            f"image {str(path)!r} is truncated: its pixel data holds {got:,} of the {expected:,} bytes "
            "that its header announces; re-export or re-download the file"
        )


def int_dtype_error(dtype: Any, shape: tuple[int, ...]) -> ImageError:
    """The error for an integer image tensor other than uint8: 0–255 pixels or 0/1 values are both
    plausible, so nothing is guessed."""
    return ImageError(
        f"an image tensor must be float in [0, 1] or uint8 (0–255), got dtype {dtype} of shape "
        f"{list(shape)}; convert it first: x.to(torch.uint8) for 0–255 pixels, or x.float() for values "
        "in [0, 1]"
    )


def channels_first(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[N,C,H,W]`` with ``C`` in (1, 3): ``[C,H,W]`` gains a batch dimension and a channels-last
    ``[N,H,W,C]`` / ``[H,W,C]`` (last dimension 1 or 3 and dimension 1 not) is permuted; else an ImageError
    naming the shape expected."""
    if t.ndim == 3:
        if t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
            t = t.permute(2, 0, 1)
        t = t.unsqueeze(0)
    elif t.ndim == 4 and t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ImageError(
            "an image tensor must be [N,3,H,W] or [3,H,W] (channels first, values in [0,1]; grey [N,1,H,W] "
            f"and channels-last [N,H,W,3] are converted), got shape {list(t.shape)}"
        )
    return t
