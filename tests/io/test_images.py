"""Tests of conceptlens.io.images: decoding of every image mode, sources, presets, resizing, samples."""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import conceptlens.io as data
from conceptlens.errors import ConceptLensError, ImageError, ParameterError
from conceptlens.io.crops import crops
from conceptlens.io.images import load_images, load_pil, to_tensor01
from conceptlens.io.presets import Preset

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
RAW = Preset(size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # no normalisation: values stay in [0, 1]


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


# --------------------------------------------------------------------------------------------- presets
def test_preset_json_roundtrip_and_types():
    p = Preset(size=32, mean=[0.5, 0.4, 0.3], std=(0.2, 0.25, 0.3), classes=("cat", "dog"))
    assert p.mean == (0.5, 0.4, 0.3) and isinstance(p.mean, tuple) and p.classes == ["cat", "dog"]
    q = Preset.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p and hash(q) == hash(p)
    assert Preset.from_dict({"size": 4, "mean": [0, 0, 0], "std": [1, 1, 1]}).classes == []


def test_preset_normalize_denormalize_inverse_and_known_value():
    p = Preset(size=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    z = p.normalize(x)
    torch.testing.assert_close(z[:, 0], (x[:, 0] - 0.5) / 0.5)
    torch.testing.assert_close(z[:, 2], x[:, 2] / 2.0)
    torch.testing.assert_close(p.denormalize(z), x)
    torch.testing.assert_close(p.normalize(x[0]), z[0])  # [3,H,W] works too
    assert p.normalize(x.double()).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0, "mean": (0, 0, 0), "std": (1, 1, 1)},
        {"size": 8, "mean": (0, 0), "std": (1, 1, 1)},
        {"size": 8, "mean": (0, 0, 0), "std": (1, 0, 1)},
        {"size": 8, "mean": (0, 0, float("nan")), "std": (1, 1, 1)},
        {"size": True, "mean": (0, 0, 0), "std": (1, 1, 1)},
    ],
)
def test_preset_validation(kwargs):
    with pytest.raises(ParameterError):
        Preset(**kwargs)


def test_preset_from_dict_errors_and_bad_channels():
    with pytest.raises(ParameterError, match="missing keys \\['std'\\]"):
        Preset.from_dict({"size": 4, "mean": [0, 0, 0]})
    with pytest.raises(ParameterError, match="unknown keys"):
        Preset.from_dict({"size": 4, "mean": [0, 0, 0], "std": [1, 1, 1], "colour": 1})
    with pytest.raises(ParameterError, match="3 colour channels"):
        RAW.normalize(torch.zeros(1, 4, 2, 2))


# --------------------------------------------------------------------------------------------- decoding
def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    g = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    img = load_pil(_save(Image.fromarray(g), tmp_path / "g.png"))
    a = _rgb(img)
    assert a.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], g)


def test_rgba_transparent_pixels_become_white(tmp_path):
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[..., 0] = 200  # a red-ish colour everywhere
    a[:, :2, 3] = 0  # left half fully transparent
    a[:, 2:, 3] = 255
    a[0, 3, 3] = 128  # one half-transparent pixel
    out = _rgb(load_pil(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png")))
    assert (out[:, :2] == 255).all()
    np.testing.assert_array_equal(out[1:, 2:], np.broadcast_to([200, 0, 0], (3, 2, 3)))
    # over white: c·α + 255·(1 − α), α = 128/255
    np.testing.assert_allclose(out[0, 3], [200 * 128 / 255 + 127, 127, 127], atol=1.5)


def test_la_transparent_pixels_become_white(tmp_path):
    img = Image.new("LA", (4, 2), (30, 255))
    img.putpixel((0, 0), (30, 0))
    out = _rgb(load_pil(_save(img, tmp_path / "la.png")))
    assert (out[0, 0] == 255).all() and (out[1, 1] == 30).all()


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 255, 0] + [10, 20, 30] + [0, 0, 0] * 254)
    img.putpixel((0, 0), 0)  # index 0 (green) is declared transparent
    for name in ("p.png", "p.gif"):
        out = _rgb(load_pil(_save(img, tmp_path / name, transparency=0)))
        assert (out[0, 0] == 255).all(), name
        np.testing.assert_array_equal(out[2, 2], [10, 20, 30])
    plain = _rgb(load_pil(_save(img, tmp_path / "plain.png")))
    np.testing.assert_array_equal(plain[0, 0], [0, 255, 0])


def test_16bit_gradient_is_rescaled_not_clipped(tmp_path):
    g16 = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (4, 1))
    path = _save(Image.fromarray(g16), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = _rgb(load_pil(path))
    np.testing.assert_allclose(out[..., 0], g16 / 257.0, atol=0.51)
    assert out.min() == 0 and out.max() == 255
    assert (out[0, :, 0] == 255).sum() == 1  # Pillow's convert would saturate almost every pixel
    assert (np.diff(out[0, :, 1]) >= 0).all()
    # big-endian 16-bit and 32-bit "I" (from a TIFF) with 16-bit values: same result
    i32 = _save(Image.fromarray(g16.astype(np.int32)), tmp_path / "g32.tif")
    assert Image.open(i32).mode == "I"
    np.testing.assert_array_equal(_rgb(load_pil(i32)), out)
    big = Image.fromarray(g16.astype(">u2"))
    assert big.mode == "I;16B"
    np.testing.assert_array_equal(np.asarray(to_tensor01(big)[0] * 255).round(), out[..., 0])


def test_float_image_in_unit_range(tmp_path):
    f = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = _rgb(load_pil(_save(Image.fromarray(f, "F"), tmp_path / "f.tif")))
    np.testing.assert_allclose(out[..., 2], f * 255, atol=0.51)


def test_cmyk_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (4, 4), (255, 0, 0, 0))  # pure cyan
    img.putpixel((0, 0), (0, 0, 0, 255))  # black
    out = _rgb(load_pil(_save(img, tmp_path / "c.tif")))
    np.testing.assert_array_equal(out[1, 1], [0, 255, 255])
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    jpg = _rgb(load_pil(_save(img, tmp_path / "c.jpg", quality=95)))
    np.testing.assert_allclose(jpg[2, 2], [0, 255, 255], atol=12)


def test_exif_orientation_6_is_rotated_upright(tmp_path):
    img = Image.new("RGB", (32, 16), BLUE)  # W=32, H=16: red left half, blue right half
    img.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_pil(path)
    assert out.size == (16, 32)  # now portrait
    a = _rgb(out)
    np.testing.assert_allclose(a[2:14].reshape(-1, 3).mean(0), RED, atol=8)  # red on top
    np.testing.assert_allclose(a[18:30].reshape(-1, 3).mean(0), BLUE, atol=8)
    x = load_images(path, RAW, size=16)  # through the whole pipeline too
    assert x[0, 0, :6].mean() > 0.9 and x[0, 2, -6:].mean() > 0.9


def test_load_pil_errors(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_pil(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="bad.png"):
        load_pil(bad)


# --------------------------------------------------------------------------------------------- load_images
def test_constant_grey_gives_exact_normalised_value(tmp_path):
    v = 100
    path = _save(Image.new("RGB", (50, 30), (v, v, v)), tmp_path / "grey.png")
    p = data.DEFAULT_PRESET
    x = load_images(path, p, size=16)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    want = (v / 255 - torch.tensor(p.mean)) / torch.tensor(p.std)
    torch.testing.assert_close(x[0], want.view(3, 1, 1).expand(3, 16, 16), atol=1e-6, rtol=0)


def test_resize_matches_torchvision_resize_centercrop():
    TF = pytest.importorskip("torchvision.transforms.functional")
    g = torch.Generator().manual_seed(0)
    for h, w in [(37, 53), (53, 37), (16, 16), (9, 12)]:
        t = torch.rand(2, 3, h, w, generator=g)
        want = TF.center_crop(TF.resize(t, [16], antialias=True), [16])
        got = load_images(t, RAW, size=16)
        torch.testing.assert_close(got, want.clamp(0, 1), atol=1e-6, rtol=0)


def test_sources_are_equivalent(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = _save(Image.fromarray(arr), tmp_path / "x.png")
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    ref = load_images(path, RAW)
    for src in (str(path), Image.fromarray(arr), arr, t, t[None], torch.from_numpy(arr).permute(2, 0, 1)):
        torch.testing.assert_close(load_images(src, RAW), ref, atol=1e-6, rtol=0)
    x, names = load_images(
        [path, arr, Image.fromarray(arr), t[None].repeat(2, 1, 1, 1)], RAW, return_paths=True
    )
    assert x.shape == (5, 3, 8, 8)
    assert names == [str(path), "<array:0>", "<pil:1>", "<tensor:2>", "<tensor:3>"]
    gray = load_images(arr[..., 0], RAW)
    torch.testing.assert_close(gray[:, 0], gray[:, 2])
    stack = load_images(np.stack([arr, arr]), RAW)
    torch.testing.assert_close(stack, ref.repeat(2, 1, 1, 1))


def test_tensor_dtype_and_device_follow_input():
    t = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    x = load_images(t, RAW, size=6)
    assert x.dtype == torch.float64 and x.device == t.device and x.shape == (2, 3, 6, 6)


@pytest.mark.parametrize(
    "src",
    [
        torch.full((1, 3, 8, 8), 2.0),  # already normalised / not in [0, 1]
        torch.rand(2, 5, 8, 8),  # wrong channel count
        np.full((4, 4, 3), 1.5, dtype=np.float32),
        np.zeros((4, 4, 3), dtype=np.int64),
        12345,
        [],
    ],
)
def test_bad_sources_raise_imageerror(src):
    with pytest.raises(ImageError):
        load_images(src, RAW)


def test_folder_sorted_case_insensitive_recursive(tmp_path):
    for name, fmt in [("b.PNG", "PNG"), ("a.JpG", "JPEG"), ("c.webp", "WEBP"), ("d.TIFF", "TIFF")]:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name, format=fmt)
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "e.bmp")
    _, names = load_images(tmp_path, RAW, return_paths=True)
    assert [Path(n).name for n in names] == ["a.JpG", "b.PNG", "c.webp", "d.TIFF"]
    _, names = load_images(str(tmp_path), RAW, recursive=True, return_paths=True)
    assert [Path(n).name for n in names] == ["a.JpG", "b.PNG", "c.webp", "d.TIFF", "e.bmp"]


def test_glob_pattern(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / f"img{i}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "other.jpg")
    x, names = load_images(str(tmp_path / "img*.png"), RAW, return_paths=True)
    assert [Path(n).name for n in names] == ["img0.png", "img1.png", "img2.png"]
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor([0.0, 50, 100]) / 255)
    with pytest.raises(ImageError, match=r"\.jpeg.*\.webp"):
        load_images(str(tmp_path / "*.gif"), RAW)


def test_corrupt_files_are_skipped_with_warning(tmp_path):
    _save(Image.new("RGB", (8, 8), RED), tmp_path / "a_good.png")
    (tmp_path / "b_bad.jpg").write_bytes(b"\xff\xd8 garbage")
    full = tmp_path / "full.png"
    Image.new("RGB", (64, 64)).save(full)
    (tmp_path / "c_truncated.png").write_bytes(full.read_bytes()[:60])
    full.unlink()
    with pytest.warns(UserWarning) as rec:
        x, names = load_images(tmp_path, RAW, return_paths=True)
    msgs = " ".join(str(w.message) for w in rec)
    assert "b_bad.jpg" in msgs and "c_truncated.png" in msgs
    assert [Path(n).name for n in names] == ["a_good.png"] and x.shape[0] == 1
    assert x[0, 0].min() > 0.99  # the good (red) image is intact


def test_all_corrupt_folder_raises_with_paths(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    (tmp_path / "y.jpg").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageError, match="x.png.*y.jpg"):
            load_images(tmp_path, RAW)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(ImageError, match=r"\.jpg.*\.png.*\.tiff"):
        load_images(tmp_path, RAW)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ImageError, match="no image files"):
        load_images(tmp_path, RAW)
    with pytest.raises(ImageError, match="does not exist"):
        load_images(tmp_path / "missing.png", RAW)
    with pytest.raises(ConceptLensError):
        load_images(tmp_path / "missing_dir", RAW)


def test_progress_flag_and_size_validation(tmp_path):
    path = _save(Image.new("RGB", (8, 8)), tmp_path / "a.png")
    assert load_images(path, RAW, progress=True).shape == (1, 3, 8, 8)
    with pytest.raises(ParameterError):
        load_images(path, RAW, size=0)


# --------------------------------------------------------------------------------------------- samples
def test_sample_images_offline_real_photos(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample_images tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    p = Preset(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, names = data.sample_images(p, return_names=True)
    assert names == data.sample_image_names() and names[0] == "chelsea"
    assert len(names) >= 5 and len(set(names)) == len(names)
    assert x.shape == (len(names), 3, 32, 32) and x.dtype == torch.float32
    x01 = x * 0.25 + 0.5
    assert x01.min() >= -1e-6 and x01.max() <= 1 + 1e-6
    assert (x01.flatten(1).std(1) > 0.02).all()  # real photos, not blank
    # the chelsea photo is the orange cat: red channel dominates blue
    assert x01[0, 0].mean() > x01[0, 2].mean() + 0.1
    if "china" in names:
        assert "flower" in names


def test_sample_images_match_skimage_oracle():
    skd = pytest.importorskip("skimage.data")
    x = data.sample_images(RAW, names=["chelsea", "camera"], size=24)
    want = load_images([skd.chelsea(), skd.camera()], RAW, size=24)
    torch.testing.assert_close(x, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(data.sample_images(RAW, names=["cat"], size=24), x[:1])


def test_sample_images_unknown_name():
    with pytest.raises(ParameterError, match="chelsea"):
        data.sample_images(RAW, names=["chelsee"])


# --------------------------------------------------------------------------------------------- crops
def _toy(n: int = 2, h: int = 10, w: int = 14) -> torch.Tensor:
    return torch.arange(n * 3 * h * w, dtype=torch.float32).reshape(n, 3, h, w)


def test_crops_positions_count_and_slices():
    x = _toy()
    p, idx, boxes = crops(x, patch_size=4, stride=3)
    ys, xs = [0, 3, 6], [0, 3, 6, 9, 10]  # x: 9 + 4 < 14, so one more patch aligned to the border
    assert p.shape == (2 * 15, 3, 4, 4) and idx.shape == (30,) and boxes.shape == (30, 4)
    want = torch.tensor([[y, x_, y + 4, x_ + 4] for y in ys for x_ in xs])
    torch.testing.assert_close(boxes, want.repeat(2, 1))
    torch.testing.assert_close(idx, torch.tensor([0] * 15 + [1] * 15))
    for m in range(30):
        y0, x0, y1, x1 = boxes[m].tolist()
        torch.testing.assert_close(p[m], x[idx[m], :, y0:y1, x0:x1], rtol=0, atol=0)


def test_crops_cover_image_nonsquare_patch_and_fraction_stride():
    x = _toy(1, 11, 17)
    p, _, boxes = crops(x, patch_size=(3, 5), stride=0.5)  # stride = round(0.5 * p) per axis
    assert p.shape[1:] == (3, 3, 5)
    assert sorted(set(boxes[:, 0].tolist())) == [0, 2, 4, 6, 8]
    assert sorted(set(boxes[:, 1].tolist())) == [0, 2, 4, 6, 8, 10, 12]
    covered = torch.zeros(11, 17, dtype=torch.bool)
    for y0, x0, y1, x1 in boxes.tolist():
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert (boxes[:, 2] <= 11).all() and (boxes[:, 3] <= 17).all()


def test_crops_default_stride_and_whole_image_patch():
    x = _toy(1, 128, 128)
    _, _, boxes = crops(x, patch_size=64)  # stride round(0.8 · 64) = 51: 0, 51, then the border 64
    assert sorted(set(boxes[:, 0].tolist())) == [0, 51, 64]
    p, _, boxes = crops(_toy(3, 6, 6), patch_size=6)
    assert p.shape == (3, 3, 6, 6) and boxes.tolist() == [[0, 0, 6, 6]] * 3


def test_crops_resize_matches_interpolate_and_batching_is_invariant():
    x = torch.rand(2, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    p, idx, boxes = crops(x, 4, 3, out_size=9)
    assert p.shape == (30, 3, 9, 9)
    m = 7
    y0, x0, y1, x1 = boxes[m].tolist()
    want = F.interpolate(
        x[idx[m] : idx[m] + 1, :, y0:y1, x0:x1], size=(9, 9), mode="bilinear", antialias=True
    )
    torch.testing.assert_close(p[m : m + 1], want)
    p1, _, _ = crops(x, 4, 3, out_size=9, batch_size=4)
    torch.testing.assert_close(p1, p, rtol=0, atol=0)
    assert crops(x, 4, 3, out_size=4)[0].equal(crops(x, 4, 3)[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patch_size": 11},
        {"patch_size": (4, 15)},
        {"patch_size": 0},
        {"patch_size": 4, "stride": 0},
        {"patch_size": 4, "stride": -0.5},
        {"patch_size": 4, "out_size": 0},
    ],
)
def test_crops_validation(kwargs):
    with pytest.raises(ParameterError):
        crops(_toy(1), **kwargs)
    with pytest.raises(ParameterError):
        crops(torch.zeros(3, 10, 10), 4)


def test_batched():
    x = torch.arange(10)
    assert [b.tolist() for b in data.batched(x, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ParameterError):
        list(data.batched(x, 0))
