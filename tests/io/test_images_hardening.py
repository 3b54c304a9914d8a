"""Issue #23, images: unambiguous tensor layouts and dtypes are converted where images enter, the rest is a
clear ImageError; a pixel limit read from the header; a PNG whose data ends early is an error, not black."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import conceptlens as cl
from conceptlens.errors import ImageError, ParameterError
from conceptlens.io.images import load_images, load_pil
from conceptlens.io.presets import Preset
from helpers import TinyNet

RAW = Preset(size=4, mean=(0.0,) * 3, std=(1.0,) * 3, classes=[])


def _png(w: int, h: int, rows: int) -> bytes:
    """An 8-bit grey PNG whose header says ``w × h`` but whose (complete) zlib stream holds ``rows`` rows."""
    def chunk(cid: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data))

    raw = b"".join(b"\x00" + bytes([200]) * w for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------- tensors and arrays
def test_grey_tensor_is_repeated_to_three_channels() -> None:
    t = torch.rand(2, 1, 4, 4)
    x = load_images(t, RAW)
    assert x.shape == (2, 3, 4, 4)
    for c in range(3):
        torch.testing.assert_close(x[:, c], t[:, 0])


def test_channels_last_tensor_is_permuted() -> None:
    t = torch.rand(2, 4, 4, 3)
    torch.testing.assert_close(load_images(t, RAW), t.permute(0, 3, 1, 2))
    torch.testing.assert_close(load_images(t[0], RAW), t[:1].permute(0, 3, 1, 2))  # [H,W,3]


def test_uint8_tensor_is_scaled_and_float64_accepted() -> None:
    u = torch.zeros(1, 3, 4, 4, dtype=torch.uint8) + 51
    torch.testing.assert_close(load_images(u, RAW), torch.full((1, 3, 4, 4), 0.2))
    d = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(load_images(d, RAW), d)  # dtype follows a floating input (documented)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_other_integer_tensors_are_refused_with_how_to_convert(dtype: torch.dtype) -> None:
    with pytest.raises(ImageError, match=r"uint8.*got dtype torch\.int.*x\.to\(torch\.uint8\)"):
        load_images(torch.zeros(2, 3, 4, 4, dtype=dtype), RAW)


@pytest.mark.parametrize("shape", [(2, 5, 4, 4), (2, 4, 4, 5), (2, 2, 4, 4), (4, 4), (1, 2, 3, 4, 5)])
def test_ambiguous_or_wrong_shapes_name_the_shape_expected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageError, match=r"\[N,3,H,W\].*got shape " + re_list(shape)):
        load_images(torch.rand(*shape), RAW)


def re_list(shape: tuple[int, ...]) -> str:
    return r"\[" + r", ".join(map(str, shape)) + r"\]"


def test_channels_first_numpy_image_is_transposed_and_int_arrays_say_how() -> None:
    a = (np.arange(3 * 5 * 6) % 256).astype(np.uint8).reshape(3, 5, 6)  # [3,H,W]: W = 6 cannot be C
    torch.testing.assert_close(load_images(a, RAW, size=5), load_images(a.transpose(1, 2, 0), RAW, size=5))
    assert load_images(a, RAW, size=5).shape == (1, 3, 5, 5)
    with pytest.raises(ImageError, match=r"int64.*astype\(np\.uint8\)"):
        load_images(np.zeros((4, 4, 3), dtype=np.int64), RAW)


# ------------------------------------------------------------------------------- the explainer's check
def test_explainer_refuses_integer_pixels_and_wrong_layouts_with_how_to_convert() -> None:
    net = TinyNet()
    ex = cl.ConceptExplainer(cl.ModelSplit(net), n_concepts=2)
    with pytest.raises(ImageError, match=r"dtype torch\.uint8.*load_images"):
        ex.fit(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), target=0)
    with pytest.raises(ImageError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        ex.fit(torch.rand(4, 16, 16, 3), target=0)
    with pytest.raises(ImageError, match=r"\[N,3,H,W\].*\[4, 1, 16, 16\].*grey.*expand"):
        ex.fit(torch.rand(4, 1, 16, 16), target=0)


def test_explainer_takes_float64_images_like_float32_and_float32_untouched() -> None:
    net = TinyNet()
    x = load_images(torch.rand(6, 3, 16, 16), net.preset)
    split = cl.ModelSplit(net)
    A32 = split.g(x)
    torch.testing.assert_close(split.g(x.double()), A32)
    assert A32.dtype == torch.float32
    torch.testing.assert_close(A32, net.features(x).permute(0, 2, 3, 1))  # valid input: unchanged path
    a = cl.ConceptExplainer(split, method="pca", n_concepts=2).fit(x, target=0)
    b = cl.ConceptExplainer(split, method="pca", n_concepts=2).fit(x.double(), target=0)
    torch.testing.assert_close(a.concepts_, b.concepts_)


# ------------------------------------------------------------------------------- files: size and truncation
def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "huge.png"
    p.write_bytes(_png(10_000, 10_000, 2))  # 100 M pixels announced in ~100 bytes
    with pytest.raises(ImageError, match=r"10000 × 10000 = 100,000,000 pixels.*50,000,000.*max_pixels"):
        load_pil(p)
    with pytest.raises(ImageError, match=r"over the limit of 10.*max_pixels"):
        load_pil(tmp_path / "huge.png", max_pixels=10)
    with pytest.warns(UserWarning, match="max_pixels"), pytest.raises(ImageError, match="none of the 1"):
        load_images(p, RAW)


def test_pixel_limit_is_configurable_and_validated(tmp_path: Path) -> None:
    p = tmp_path / "ok.png"
    Image.new("RGB", (8, 6), (255, 0, 0)).save(p)
    assert load_pil(p, max_pixels=48).size == (8, 6)
    with pytest.raises(ImageError, match="8 × 6 = 48 pixels"):
        load_pil(p, max_pixels=47)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_images(p, RAW, max_pixels=None).shape == (1, 3, 4, 4)
    for bad in (0, -5, 2.5, "big"):
        with pytest.raises(ParameterError, match="max_pixels"):
            load_pil(p, max_pixels=bad)


@pytest.mark.parametrize("loose", [False, True])
def test_png_with_less_data_than_its_header_is_an_error_not_black(tmp_path: Path, loose: bool) -> None:
    p = tmp_path / "short.png"
    p.write_bytes(_png(300, 200, 2))
    old_pixels, old = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = loose  # even a user who set it globally gets the error
    try:
        with pytest.raises(ImageError, match=r"truncated: its pixel data holds 602 of the 60,200 bytes"):
            load_pil(p)
    finally:
        assert ImageFile.LOAD_TRUNCATED_IMAGES is loose and Image.MAX_IMAGE_PIXELS == old_pixels  # restored
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_complete_pngs_still_load(tmp_path: Path) -> None:
    p = tmp_path / "full.png"
    p.write_bytes(_png(30, 20, 20))
    assert np.asarray(load_pil(p)).min() == 200
    q = tmp_path / "interlaced.png"
    Image.fromarray(np.full((7, 9, 3), 9, dtype=np.uint8)).save(q, interlace=1)  # Pillow may ignore it
    assert load_pil(q).size == (9, 7)
    rgba = tmp_path / "rgba16.png"
    Image.fromarray(np.full((5, 6), 40000, dtype=np.uint16)).save(rgba)
    assert load_pil(rgba).size == (6, 5)


def test_file_cut_in_the_middle_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "cut.png"
    Image.fromarray((np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_pil(p)
