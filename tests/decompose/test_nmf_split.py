"""NMF over blocks of rows in one-thread workers (decompose/_nmf_split.py): the blocks' products are the
data's, the blocked half-step is the whole one, a two-thread fit runs its sweeps in one-thread workers, is
deterministic, and restores the process's thread count."""

from __future__ import annotations

import threading

import pytest
import torch

from conceptlens import decompose
from conceptlens._threads import one_thread_pool
from conceptlens.decompose import _nmf_split
from conceptlens.decompose._nmf_products import DataProducts
from conceptlens.decompose._nmf_solvers import hals


def _relu_data(n: int = 5000, C: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, C, generator=g) - 1.0).clamp_min(0)  # ~16 % non-zeros, like ReLU activations


@pytest.mark.parametrize("sparse", [True, False])
def test_row_blocks_are_views_whose_products_make_the_datas(sparse: bool) -> None:
    A = _relu_data()
    data = DataProducts(A, sparse=sparse)
    assert data.sparse is sparse
    blocks = data.row_blocks(2)
    assert len(blocks) == 2 and sum(b.A.shape[0] for b in blocks) == A.shape[0]
    assert blocks[0].A.data_ptr() == A.data_ptr()  # views, no copy
    M = torch.rand(A.shape[1], 7, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(torch.cat([b.mm(M) for b in blocks]), A @ M, rtol=1e-5, atol=1e-5)
    V = torch.rand(A.shape[0], 7, generator=torch.Generator().manual_seed(2))
    cuts = V.split([b.A.shape[0] for b in blocks])
    total = sum(b.rmm(c) for b, c in zip(blocks, cuts, strict=True))
    assert torch.allclose(total, A.T @ V, rtol=1e-4, atol=1e-4)
    if sparse:  # the cuts fall on the borders of the cached blocks of Aᵀ
        borders = {lo for lo, _, _ in data._csr_t}
        assert blocks[1].A.data_ptr() - A.data_ptr() == min(borders - {0}) * A.shape[1] * 4


def test_blocked_half_step_is_the_whole_one(two_threads) -> None:
    A = _relu_data()
    g = torch.Generator().manual_seed(3)
    k = 5
    W, Ut = torch.rand(k, A.shape[1], generator=g), torch.rand(k, A.shape[0], generator=g)
    data = DataProducts(A, sparse=True)
    want = hals((A @ W.T).T.contiguous(), W @ W.T, Ut, 4, floor=0.0, delta=0.0)  # fixed sweeps
    with one_thread_pool(2, "test") as pool:
        got, R, S = _nmf_split.RowBlocks(data, pool, 2).u_half_step(hals, Ut, W, 4, floor=0.0, delta=0.0)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert torch.allclose(R, got @ A, rtol=1e-4, atol=1e-4)
    assert torch.allclose(S, got @ got.T, rtol=1e-4, atol=1e-4)


def test_two_thread_fit_sweeps_in_one_thread_workers_deterministically(two_threads, monkeypatch) -> None:
    A = _relu_data(6000, 64)
    seen: list[tuple[str, int]] = []
    from conceptlens.decompose import _nmf_solvers  # the fit takes its solver from SOLVERS: spy there

    orig = _nmf_solvers.SOLVERS["hals"]

    def spy(*a, **kw):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return orig(*a, **kw)

    monkeypatch.setitem(_nmf_solvers.SOLVERS, "hals", spy)
    monkeypatch.setattr(decompose.nmf, "SMALL_FIT", 0)  # a small problem: fitted like a large one

    def fit() -> decompose.NMF:
        m = decompose.NMF(6, seed=0)
        m.sparse_products = True
        return m.fit(A)

    first = fit()
    workers = {name for name, _ in seen if name.startswith("nmf")}
    assert len(workers) == 2  # the U half-steps ran in two worker threads …
    assert {t for _, t in seen} == {1}  # … in one intra-op thread each, the W half-steps in the caller's one
    assert torch.get_num_threads() == 2  # restored
    again = fit()
    assert torch.equal(first.components_, again.components_)  # deterministic for a seed and thread count
    torch.set_num_threads(1)
    one = fit()
    assert abs(one.reconstruction_err_ - first.reconstruction_err_) < 2e-3 * one.reconstruction_err_


def test_pool_restores_the_thread_count_after_an_error(two_threads) -> None:
    with pytest.raises(RuntimeError, match="boom"), one_thread_pool(2, "test") as pool:
        assert pool is not None and torch.get_num_threads() == 1
        assert pool.submit(torch.get_num_threads).result() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with one_thread_pool(1) as none:
        assert none is None and torch.get_num_threads() == 2


def test_encode_blocks_run_in_one_thread_workers_with_the_one_thread_codes(two_threads, monkeypatch) -> None:
    """With two threads the encode's blocks are solved in two one-thread workers; the codes are bit for bit
    those of a one-thread encode (each row's solve is its block's own), and a bad row still raises."""
    from conceptlens.decompose import _nmf_encode
    from conceptlens.errors import ActivationError

    A = _relu_data(3000, 48)
    W = decompose.NMF(6, seed=0).fit(A).components_
    monkeypatch.setattr(_nmf_encode, "ENCODE_ELEMS", 6 * 256)  # 256 rows a block: 12 blocks, the last ragged
    seen: list[tuple[str, int]] = []
    orig = _nmf_encode._nnls_hals

    def spy(*a, **kw):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return orig(*a, **kw)

    monkeypatch.setattr(_nmf_encode, "_nnls_hals", spy)
    two = _nmf_encode.nnls_codes(A, W)
    assert len(seen) == 12 and {t for _, t in seen} == {1}
    assert len({name for name, _ in seen}) == 2 and all(name.startswith("nnls") for name, _ in seen)
    assert torch.get_num_threads() == 2  # restored
    torch.set_num_threads(1)
    seen.clear()
    one = _nmf_encode.nnls_codes(A, W)
    assert {name for name, _ in seen} == {threading.current_thread().name}  # one thread: no workers
    assert torch.equal(one, two)
    torch.set_num_threads(2)
    bad = A.clone()
    bad[2900, 3] = float("nan")  # in the last block
    with pytest.raises(ActivationError):
        _nmf_encode.nnls_codes(bad, W)
    assert torch.get_num_threads() == 2
