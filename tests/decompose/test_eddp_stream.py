"""EDDP out of core: mini-batches drawn from blocks of whole images in a seeded order give the same fit from
a tensor and from a store, read the store block by block, and still recover the paper's planted concepts;
the explainer fits EDDP above its memory budget (and refuses a method with no out-of-core fit).

Data: the paper's planted setting of :mod:`test_eddp` (3 concepts, 2 distractors, 16 channels), as rows or
as 60 images of 4 × 4 positions, and a GAP + linear head for the alignment term (URA).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import conceptlens as cl
from conceptlens.decompose import base
from conceptlens.decompose.base import Decomposition, register
from conceptlens.decompose.eddp import EDDP
from conceptlens.errors import ParameterError
from decompose.test_eddp import C, GapLinear, K, match, planted, signal_rmse
from helpers import TinyNet
from store_probe import store_of

pytestmark = pytest.mark.usefixtures("one_thread_module")

QUICK = {"max_iter": 60, "init_rows": 500, "polish_iter": 20, "n_init": 1}


def _images(seed: int = 2) -> torch.Tensor:
    """``A [60, 4, 4, 16]``: 960 planted rows grouped into images."""
    return planted(n=960, seed=seed)[0].reshape(60, 4, 4, C)


def _same(a: EDDP, b: EDDP) -> None:
    ta, tb = a.state_tensors(), b.state_tensors()
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-6, rtol=1e-5, msg=k)


def test_a_store_within_one_block_gives_the_in_memory_fit(tmp_path: Path) -> None:
    A = _images()
    ref = EDDP(K, head=GapLinear(n_out=3, seed=1), seed=0, **QUICK).fit(A)
    store = store_of(A, str(tmp_path / "acts"), 7)
    got = EDDP(K, head=GapLinear(n_out=3, seed=1), seed=0, **QUICK).fit(store, image_shape=(4, 4))
    _same(ref, got)
    assert any("ura_entropy" in h for h in got.loss_history_)  # URA ran on whole images of the store
    assert got.block_reads_ == 0 == ref.block_reads_


def test_blocks_give_the_same_fit_from_a_store_and_a_tensor(tmp_path: Path) -> None:
    A = _images()
    kw = {**QUICK, "block_size": 100, "batch_size": 40}  # 6 images = 96 rows per block: 10 blocks
    ref = EDDP(K, head=GapLinear(n_out=3, seed=1), seed=0, **kw).fit(A)
    store = store_of(A, str(tmp_path / "acts"), 7)
    got = EDDP(K, head=GapLinear(n_out=3, seed=1), seed=0, **kw).fit(store, image_shape=(4, 4))
    _same(ref, got)
    blocks = [r for r in store.reads if r[0] == "block"]
    assert len(blocks) == got.block_reads_ == ref.block_reads_ >= 10
    # whole images (multiples of 16 rows), at most 96 rows each
    assert all(r[1] % 16 == 0 and 0 < r[2] - r[1] <= 96 for r in blocks)
    # a seeded order visiting every block once before any block again
    assert sorted(r[1] for r in blocks[:10]) == list(range(0, 960, 96))
    assert [r[1] for r in blocks[:10]] != sorted(r[1] for r in blocks[:10])
    # another seed, another order
    other = store_of(A, str(tmp_path / "acts2"), 7)
    EDDP(K, seed=1, **kw).fit(other, image_shape=(4, 4))
    assert [r for r in other.reads if r[0] == "block"][:10] != blocks[:10]
    # blocks change the draws: not the all-rows fit
    plain = EDDP(K, head=GapLinear(n_out=3, seed=1), seed=0, **QUICK).fit(A)
    assert not torch.allclose(plain.decoding_directions_, ref.decoding_directions_)


def test_blocks_still_recover_the_planted_concepts() -> None:
    X, S, present = planted(seed=1)
    d = EDDP(n_concepts=K, seed=1, block_size=1500).fit(X)  # 4 blocks of 1,500 rows
    assert d.block_reads_ >= 4
    rows, cols, iou = match(d.encode(X) > 0.5, present)
    assert iou.min() >= 0.9, iou
    assert signal_rmse(d.encoding_directions_[rows], S[cols]).max() <= 0.3


def test_block_size_is_validated() -> None:
    with pytest.raises(ParameterError, match="block_size"):
        EDDP(K, block_size=0).fit(_images())


@pytest.mark.parametrize("params", [QUICK, {**QUICK, "block_size": 1000}])
def test_the_explainer_fits_eddp_above_the_budget_with_the_same_numbers(
    params: dict[str, object], tmp_path: Path
) -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    x = torch.rand(60, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 4 - 2
    plain = cl.ConceptExplainer(split, "eddp", 4, seed=0, method_params=params).fit(x, 2)
    mem = cl.ConceptExplainer(split, "eddp", 4, seed=0, method_params=params).fit(x, 2, memory_budget="1GB")
    disk = cl.ConceptExplainer(split, "eddp", 4, seed=0, method_params=params).fit(
        x, 2, memory_budget=0, store_dir=tmp_path / "acts", batch_size=16)
    assert disk.stream_["on_disk"] and not mem.stream_["on_disk"]
    for got in (mem, disk):
        for f in ("concepts_", "importance_", "weights_", "fit_scores_"):
            torch.testing.assert_close(getattr(got, f), getattr(plain, f), atol=1e-5, rtol=1e-5)
        _same(plain.decomposition_, got.decomposition_)


class InMemoryOnly(Decomposition):
    """A method with no out-of-core fit: the first ``k`` channels as concepts."""

    def fit(self, A: torch.Tensor) -> InMemoryOnly:
        self.components_ = torch.eye(self._validate(A).shape[1])[: self.n_concepts]
        return self

    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        return A @ self.components_.T


@pytest.fixture()
def in_memory_only() -> Iterator[None]:
    register("in_memory_only")(InMemoryOnly)
    try:
        yield
    finally:
        base._REGISTRY.pop("in_memory_only", None)


def test_a_method_without_an_out_of_core_fit_says_so(in_memory_only: None) -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    x = torch.rand(10, 3, 16, 16)
    with pytest.raises(ParameterError, match="'in_memory_only' fits in memory only.*memory_budget.*'eddp'"):
        cl.ConceptExplainer(split, "in_memory_only", 3).fit(x, 0, memory_budget=0)
    cl.ConceptExplainer(split, "in_memory_only", 3).fit(x, 0)  # in memory it fits


def test_store_rows_by_range_and_by_index_are_the_tensors(tmp_path: Path) -> None:
    from conceptlens.decompose._image_stream import RowSource

    A = _images()
    rows = A.reshape(-1, C)
    probe = store_of(A, str(tmp_path / "acts"), 7)  # shards of 112 rows
    store = probe.store
    assert torch.equal(store.read_rows(50, 300), rows[50:300])  # across three shards
    assert torch.equal(store.read_rows(112, 224), rows[112:224])  # exactly one shard
    assert store.read_rows(5, 5).shape == (0, C)
    for bad in ((-1, 3), (3, 2), (0, 961)):
        with pytest.raises(ParameterError, match="read_rows"):
            store.read_rows(*bad)
    idx = torch.randperm(960, generator=torch.Generator().manual_seed(0))[:100]
    src = RowSource(probe, (4, 4))
    assert torch.equal(src.gather(idx, 64), rows[idx])
    assert (src.n_images, src.per_image, src.n_channels) == (60, 16, C)
