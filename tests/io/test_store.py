"""The activation store: appends, re-batching, crash safety, streaming from a split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptlens.errors import ActivationError, StoreError
from conceptlens.io.store import ActivationStore


def test_store_roundtrip_and_rebatching(tmp_path):
    A = torch.rand(2, 5, 5, 7)
    B = torch.rand(13, 7)
    s = ActivationStore(tmp_path / "st")
    s.append(A)
    s.append(B)
    assert len(s) == 63 and s.n_channels == 7 and len(s.shards) == 2
    full = torch.cat([A.reshape(-1, 7), B])
    again = ActivationStore(tmp_path / "st")  # reopened from the index
    batches = list(again.iter_batches(20))
    assert [b.shape[0] for b in batches] == [20, 20, 20, 3]
    assert torch.equal(torch.cat(batches), full) and torch.equal(again.read_all(), full)
    meta = json.loads((tmp_path / "st" / "index.json").read_text())
    assert [e["rows"] for e in meta["shards"]] == [50, 13]
    with pytest.raises(ActivationError, match="channels"):
        again.append(torch.rand(3, 8))


def test_store_interrupted_shard_write_is_never_read(tmp_path, monkeypatch):
    s = ActivationStore(tmp_path)
    A = torch.rand(10, 4)
    s.append(A)
    import conceptlens.io.store as store_mod

    real_replace = os.replace

    def crash_on_index(src, dst):  # the shard lands, then the process "dies" before the index
        if str(dst).endswith("index.json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", crash_on_index)
    with pytest.raises(KeyboardInterrupt):
        s.append(torch.rand(5, 4))
    monkeypatch.setattr(store_mod.os, "replace", real_replace)
    # A half-written file under the next shard's name (e.g. a torn copy) must not be read either.
    (tmp_path / "shard-000002.safetensors").write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="removed 2 file"):  # the orphan shard and the torn copy
        re = ActivationStore(tmp_path)
    assert len(re) == 10 and torch.equal(re.read_all(), A)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # temporaries cleaned up
    re.append(torch.ones(2, 4))  # the store stays usable: the orphan shard is overwritten
    assert len(ActivationStore(tmp_path)) == 12


def test_store_interrupted_during_shard_bytes(tmp_path, monkeypatch):
    s = ActivationStore(tmp_path)
    s.append(torch.rand(3, 4))
    import conceptlens.io.store as store_mod

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        s.append(torch.rand(5, 4))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["index.json", "shard-000000.safetensors"]
    assert len(ActivationStore(tmp_path)) == 3


class _FakeSplit:
    """g(x) = relu(x) channels-last, like a ModelSplit at a spatial layer."""

    def g(self, x: torch.Tensor, progress: bool | None = None) -> torch.Tensor:
        return x.clamp_min(0).permute(0, 2, 3, 1)


def test_store_from_split_streams_batches(tmp_path):
    x = torch.randn(7, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    s = ActivationStore.from_split(_FakeSplit(), x, tmp_path / "a", batch_size=3, progress=False)
    assert len(s.shards) == 3 and len(s) == 7 * 16 and s.n_channels == 3
    assert torch.equal(s.read_all(), _FakeSplit().g(x).reshape(-1, 3))
    it = ((xb, 0) for xb in x.split(2))  # a lazy iterable of (images, labels), like a DataLoader
    s2 = ActivationStore.from_split(_FakeSplit(), it, tmp_path / "b", progress=False)
    assert torch.equal(s2.read_all(), s.read_all())


# ------------------------------------------------------------------------------------- trust (#23)
def _index(path) -> dict:
    return json.loads((path / "index.json").read_text())


def test_an_index_cannot_point_outside_the_store(tmp_path):
    (tmp_path / "outside_secret.safetensors").write_bytes(b"secret")
    s = ActivationStore(tmp_path / "st")
    s.append(torch.rand(4, 3))
    meta = _index(tmp_path / "st")
    for name in ("../outside_secret.safetensors", "/etc/passwd", "sub/shard-000000.safetensors"):
        meta["shards"][0]["file"] = name
        (tmp_path / "st" / "index.json").write_text(json.dumps(meta))
        with pytest.raises(StoreError, match="inside the store"):
            ActivationStore(tmp_path / "st")


def test_a_changed_shard_is_detected(tmp_path):
    s = ActivationStore(tmp_path)
    s.append(torch.rand(6, 3))
    shard = tmp_path / "shard-000000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01  # one flipped bit in the data
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="checksum"):
        ActivationStore(tmp_path).read_all()


@pytest.mark.parametrize("index", ["[]", "{}", '{"format": 2}', '{"format": 2, "shards": 3}',
                                   '{"format": 2, "n_channels": 3, "dtype": "torch.float32", '
                                   '"shards": [{"file": "shard-000000.safetensors", "rows": -1}]}',
                                   "[" * 100_000, "not json"])
def test_malformed_indexes_give_a_store_error(tmp_path, index):
    (tmp_path / "index.json").write_text(index)
    with pytest.raises(StoreError) as err:
        ActivationStore(tmp_path)
    assert isinstance(err.value, ActivationError)  # a ConceptLensError: the CLI shows one line


def test_leftovers_of_interrupted_writes_are_cleaned_on_open(tmp_path):
    s = ActivationStore(tmp_path)
    s.append(torch.rand(5, 2))
    (tmp_path / ".shard-000001.safetensors.abc.tmp").write_bytes(b"half")
    (tmp_path / ".index.json.def.tmp").write_bytes(b"half")
    (tmp_path / "shard-000001.safetensors").write_bytes(b"orphan")
    (tmp_path / "notes.txt").write_text("the user's file stays")
    with pytest.warns(UserWarning, match="removed 3 file"):
        again = ActivationStore(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["index.json", "notes.txt", "shard-000000.safetensors"]
    assert len(again) == 5


def test_format_1_stores_are_still_read(tmp_path):
    s = ActivationStore(tmp_path)
    A = torch.rand(4, 3)
    s.append(A)
    meta = _index(tmp_path)
    meta["format"] = 1
    del meta["shards"][0]["sha256"]
    (tmp_path / "index.json").write_text(json.dumps(meta))
    assert torch.equal(ActivationStore(tmp_path).read_all(), A)


# -- out-of-core fits of PCA, k-means and CRAFT from a store ---------------------------------------------
def _store_of(A: torch.Tensor, path: Path, rows: int = 700) -> ActivationStore:
    store = ActivationStore(path)
    for b in A.split(rows):
        store.append(b)
    return store


def test_pca_from_a_store_equals_pca_in_memory_and_scikit_learn(tmp_path: Path) -> None:
    from sklearn.decomposition import PCA as SkPCA

    from conceptlens.decompose import PCA

    g = torch.Generator().manual_seed(0)
    A = torch.randn(5000, 12, generator=g) @ torch.diag(torch.linspace(3, 0.1, 12)) + 50.0  # far from 0
    mem, disk = PCA(4).fit(A), PCA(4).fit(_store_of(A, tmp_path))
    for f in ("components_", "mean_", "explained_variance_", "explained_variance_ratio_"):
        assert torch.allclose(getattr(mem, f), getattr(disk, f), rtol=1e-5, atol=1e-5), f
    sk = SkPCA(4).fit(A.double().numpy())
    assert np.allclose(disk.explained_variance_.numpy(), sk.explained_variance_, rtol=1e-4)
    cos = (disk.components_.double() @ torch.from_numpy(sk.components_).T).diagonal().abs()
    assert torch.allclose(cos, torch.ones(4, dtype=torch.float64), atol=1e-5)


def test_kmeans_streamed_lloyd_is_the_same_from_memory_or_a_store(tmp_path: Path) -> None:
    from sklearn.cluster import KMeans as SkKMeans

    from conceptlens.decompose import KMeans

    g = torch.Generator().manual_seed(1)
    centres = 6 * torch.randn(5, 8, generator=g)
    A = (centres[torch.randint(5, (4000,), generator=g)] + torch.randn(4000, 8, generator=g))
    mem = KMeans(5, batch_size=1000, seed=0).fit(A)
    disk = KMeans(5, batch_size=1000, seed=0).fit(_store_of(A, tmp_path, 333))
    assert torch.equal(mem.components_, disk.components_) and mem.inertia_ == disk.inertia_
    full = KMeans(5, seed=0).fit(A)
    sk = SkKMeans(5, n_init=3, random_state=0).fit(A.numpy())
    assert disk.inertia_ == pytest.approx(sk.inertia_, rel=1e-3)
    assert disk.inertia_ == pytest.approx(full.inertia_, rel=1e-3)
    assert torch.equal(disk.encode(A).argmax(1), mem.encode(A).argmax(1))


def test_craft_fits_crop_rows_from_a_store(tmp_path: Path) -> None:
    from conceptlens.decompose import CRAFT

    rows = torch.rand(3000, 16, generator=torch.Generator().manual_seed(2))
    mem = CRAFT(4, batch_size=1000, max_iter=30).fit(rows)
    disk = CRAFT(4, batch_size=1000, max_iter=30).fit(_store_of(rows, tmp_path))
    assert disk.n_crops_ == mem.n_crops_ == 3000
    assert torch.allclose(mem.components_, disk.components_, atol=1e-5)


def test_each_shard_is_hashed_once_per_store_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conceptlens.io.store as store_mod

    _store_of(torch.rand(100, 4), tmp_path, 30)  # 4 shards
    calls: list[int] = []
    real = store_mod.sha256_bytes
    monkeypatch.setattr(store_mod, "sha256_bytes", lambda b: calls.append(1) or real(b))
    store = ActivationStore(tmp_path)
    for _ in range(3):  # three passes, as an out-of-core fit makes
        assert sum(b.shape[0] for b in store.iter_batches(16)) == 100
    assert len(calls) == 4
    shard = tmp_path / store.shards[0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="checksum"):  # a store opened again checks every shard again
        ActivationStore(tmp_path).read_all()
