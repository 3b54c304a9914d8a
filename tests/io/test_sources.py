"""Image sources: every input kind gives the same preprocessed batches; bad batches and labels are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import conceptlens as cl
from conceptlens.errors import ImageError, ParameterError
from conceptlens.io.sources import ImageSource, RowBuffer, as_source, extract, parse_bytes
from helpers import TinyNet

PRESET = cl.data.Preset(size=16, mean=(0.5,) * 3, std=(0.25,) * 3)


def _write(folder: Path, n: int, seed: int = 0, size: int = 20) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"img{i:03d}.png")
    return arrays


def _all(src: ImageSource) -> tuple[torch.Tensor, torch.Tensor | None]:
    xs, ys = zip(*src.batches(), strict=True)
    return torch.cat(xs), (None if ys[0] is None else torch.cat(ys))


def test_parse_bytes() -> None:
    assert parse_bytes(1234) == 1234
    assert parse_bytes("512MB") == 512_000_000
    assert parse_bytes("2 GiB") == 2 * 1024**3
    assert parse_bytes("1.5k") == 1500
    assert parse_bytes(None) > 0
    with pytest.raises(ParameterError, match="memory_budget"):
        parse_bytes("lots")


def test_folder_batches_equal_load_images(tmp_path: Path) -> None:
    _write(tmp_path, 11)
    src = ImageSource(tmp_path, preset=PRESET, batch_size=4)
    x, y = _all(src)
    assert y is None and len(src) == 11
    assert torch.equal(x, cl.data.load_images(tmp_path, preset=PRESET))
    assert torch.equal(src.take([10, 0, 5]), x[[10, 0, 5]])


def test_imagefolder_tree_labels_and_class_folder(tmp_path: Path) -> None:
    _write(tmp_path / "cat", 3, seed=1)
    _write(tmp_path / "dog", 5, seed=2)
    x, y = _all(ImageSource(tmp_path, preset=PRESET, batch_size=3))
    assert y is not None and y.tolist() == [0] * 3 + [1] * 5  # torchvision's sorted-folder labels
    xd, yd = _all(ImageSource(tmp_path, preset=PRESET, class_folder="dog"))
    assert yd is not None and yd.tolist() == [1] * 5
    assert torch.equal(xd, cl.data.load_images(tmp_path / "dog", preset=PRESET))
    with pytest.raises(ParameterError, match="'dgo'.*dog"):
        ImageSource(tmp_path, preset=PRESET, class_folder="dgo")


class _PilSet(Dataset):  # type: ignore[type-arg]
    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.arrays[i]), i % 2


def test_dataset_of_pil_images_gets_the_preset(tmp_path: Path) -> None:
    arrays = _write(tmp_path, 7)
    x, y = _all(ImageSource(_PilSet(arrays), preset=PRESET, batch_size=3))
    assert torch.allclose(x, cl.data.load_images(tmp_path, preset=PRESET), atol=1e-6)
    assert y is not None and y.tolist() == [i % 2 for i in range(7)]
    xs, ys = _all(ImageSource(_PilSet(arrays), preset=PRESET, batch_size=3, select=1))
    assert ys is not None and ys.tolist() == [1, 1, 1] and torch.equal(xs, x[1::2])


def test_dataloader_pairs_and_dicts() -> None:
    x = torch.randn(10, 3, 8, 8)
    y = torch.arange(10) % 3
    got, labels = _all(as_source(DataLoader(TensorDataset(x, y), batch_size=4)))
    assert torch.equal(got, x) and labels is not None and torch.equal(labels, y)
    dicts = [{"pixel_values": x[i : i + 5], "labels": y[i : i + 5]} for i in (0, 5)]
    loader = DataLoader(dicts, batch_size=None)
    got, labels = _all(as_source(loader))
    assert torch.equal(got, x) and labels is not None and torch.equal(labels, y)


@pytest.mark.parametrize(("batch", "match"), [
    (torch.rand(4, 8, 8), r"shape \[4, 8, 8\].*\[B,3,H,W\]"),
    ((torch.rand(4, 3, 8, 8) * 255).to(torch.uint8), "torch.uint8 images.*Normalize"),
    ([1, 2, 3], "int, not a tensor"),
    ((torch.rand(4, 3, 8, 8), torch.zeros(3)), r"labels \[3\].*for 4 images"),
])
def test_bad_dataloader_batches_are_refused(batch: object, match: str) -> None:
    loader = DataLoader([batch], batch_size=None)
    with pytest.raises(ImageError, match=match):
        _all(as_source(loader))


def test_labels_that_select_nothing_or_no_labels() -> None:
    data = TensorDataset(torch.randn(6, 3, 8, 8), torch.zeros(6, dtype=torch.long))
    loader = DataLoader(data, batch_size=4)
    with pytest.raises(ImageError, match="no image with label 3"):
        _all(as_source(loader, select=3))
    with pytest.raises(ImageError, match="needs labels"):
        _all(as_source(torch.randn(4, 3, 8, 8), select=0))


def test_unknown_inputs_are_refused() -> None:
    with pytest.raises(ImageError, match="cannot read images from a dict"):
        ImageSource({"a": 1})
    with pytest.raises(ImageError, match="N ≥ 1"):
        ImageSource(torch.zeros(0, 3, 4, 4))


def test_row_buffer_spills_to_a_store_with_the_same_rows(tmp_path: Path) -> None:
    blocks = [torch.randn(5, 2, 2, 3) for _ in range(4)]
    mem, disk = RowBuffer(10**9), RowBuffer(200, tmp_path / "acts")
    for b in blocks:
        mem.append(b)
        disk.append(b)
    assert mem.in_memory and not disk.in_memory
    assert torch.equal(disk.data().read_all(), mem.tensor().reshape(-1, 3))  # type: ignore[union-attr]
    disk.close()
    assert (tmp_path / "acts" / "index.json").exists()  # a store_dir the user gave is kept


def test_extract_in_memory_and_on_disk_agree() -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    x = torch.randn(13, 3, 16, 16)
    src = as_source(x, batch_size=5)
    mem, disk = extract(split, src, memory_budget="1GB"), extract(split, src, memory_budget=0)
    try:
        assert mem.in_memory and not disk.in_memory
        assert torch.equal(mem.logits, disk.logits) and mem.minimum == disk.minimum
        a = torch.cat(list(mem.batches(4)))
        assert a.shape == (13, *split.activation_shape)
        assert torch.equal(torch.cat(list(disk.batches(4))), a)
        assert torch.allclose(a, split.g(x), atol=1e-6)
        tmp = disk.rows.store.path  # type: ignore[union-attr]
    finally:
        disk.close()
        mem.close()
    assert not tmp.exists()  # the temporary store is removed
