"""The NMF engine: sparse products, the fit and its stopping rule, mini-batch (streamed) NMF, data-parallel
NMF, encoding."""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from conceptlens.decompose import NMF, _nmf_encode, _nmf_products, _nmf_solvers
from conceptlens.decompose.nmf import (
    DataProducts,
    converged,
    cross_product,
    nnls_codes,
    normalise_rows,
    sweep_budget,
)
from conceptlens.errors import ActivationError, ParameterError
from conceptlens.io.store import ActivationStore


def relu_data(n: int = 1500, C: int = 128, seed: int = 0) -> torch.Tensor:
    """Low-rank structure plus noise, thresholded so that ~90 % of entries are zero (like a ReLU layer)."""
    g = np.random.default_rng(seed)
    Z = 0.3 * g.standard_normal((n, 20)) @ g.standard_normal((20, C)) + g.standard_normal((n, C))
    return torch.from_numpy(np.maximum(Z - np.quantile(Z, 0.9), 0).astype(np.float32))


def planted(n: int = 1500, C: int = 96, k: int = 6, noise: float = 0.01, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, k, generator=g) ** 3
    W = torch.rand(k, C, generator=g) * (torch.rand(k, C, generator=g) < 0.3)
    A = U @ W
    return A + noise * A.std() * torch.rand(n, C, generator=g), W


def matched_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = torch.nn.functional.normalize(b.double(), dim=1)
    cos = (a @ b.T).numpy()
    r, c = linear_sum_assignment(-cos)
    return float(cos[r, c].min())



# ---------------------------------------------------------------------------------------------
# sparse products
# ---------------------------------------------------------------------------------------------
def test_sparse_products_equal_dense():
    A = relu_data(300, 64)
    d = DataProducts(A, sparse=None)
    assert d.sparse  # ~10 % density picks CSR on CPU
    M, N = torch.rand(64, 5), torch.rand(300, 5)
    torch.testing.assert_close(d.mm(M), A @ M, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.rmm(N), A.T @ N, rtol=1e-5, atol=1e-5)
    assert not DataProducts(torch.rand(50, 8), sparse=None).sparse  # dense data stays dense


def test_csr_copies_from_threaded_row_blocks_give_the_products_of_one_scan(monkeypatch):
    A = relu_data(301, 64)
    A[7] = 0.0  # an empty row inside a block
    g = torch.Generator().manual_seed(3)
    M, N = torch.rand(64, 6, generator=g), torch.rand(301, 6, generator=g)
    one = DataProducts(A, sparse=True)
    monkeypatch.setattr(_nmf_products, "SCAN_ELEMS", 64 * 50)  # ~50 rows per thread → 4 ragged blocks
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    threaded = DataProducts(A, sparse=True)
    monkeypatch.undo()
    # the same CSR copies, so bit-identical products, equal to the dense ones
    torch.testing.assert_close(threaded.mm(M), one.mm(M), rtol=0, atol=0)
    torch.testing.assert_close(threaded.rmm(N), one.rmm(N), rtol=0, atol=0)
    torch.testing.assert_close(threaded.mm(M), A @ M, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(threaded.rmm(N), A.T @ N, rtol=1e-5, atol=1e-5)
    assert threaded.density == one.density == float(torch.count_nonzero(A)) / A.numel()


def test_blocked_transposed_product_equals_the_dense_one(monkeypatch):
    A = relu_data(1000, 48, seed=5)
    M = torch.rand(1000, 7, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(_nmf_products, "RMM_BLOCK_ROWS", 300)  # Aᵀ in ⌈1000 / 300⌉ = 4 column blocks
    d = DataProducts(A, sparse=True)
    torch.testing.assert_close(d.rmm(M), A.T @ M, rtol=1e-5, atol=1e-5)
    N = torch.rand(48, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(d.mm(N), A @ N, rtol=1e-5, atol=1e-5)


def test_sparse_products_widened_to_whole_simd_columns_equal_the_narrow_ones(monkeypatch):
    A = relu_data(400, 48, seed=6)
    d = DataProducts(A, sparse=True)
    g = torch.Generator().manual_seed(2)
    # widths below, at and above the widening threshold, multiples of 8 and not; 35 twice (the padded
    # buffer is reused and must stay zero beyond the operand's columns)
    shapes = (5, 16, 24, 25, 35, 35)
    ops = [(torch.rand(48, r, generator=g), torch.rand(400, r, generator=g)) for r in shapes]
    wide = [(d.mm(M), d.rmm(N)) for M, N in ops]
    for (M, N), (P, R) in zip(ops, wide, strict=True):
        assert P.shape == (400, M.shape[1]) and R.shape == (48, M.shape[1])
        torch.testing.assert_close(P, A @ M, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(R, A.T @ N, rtol=1e-5, atol=1e-5)
    # the results do not depend on the widening: bit-identical to products that are never widened
    monkeypatch.setattr(_nmf_products, "PAD_COLS", 1)
    narrow = DataProducts(A, sparse=True)
    for (M, N), (P, R) in zip(ops, wide, strict=True):
        torch.testing.assert_close(narrow.mm(M), P, rtol=0, atol=0)
        torch.testing.assert_close(narrow.rmm(N), R, rtol=0, atol=0)


def test_sweep_budget_grows_with_the_cost_of_the_products_and_is_capped():
    # 1 + ½ρ sweeps, ρ = 1 + products / one sweep: tiny products get one sweep per half-step, costly ones
    # more, never more than the cap; sparse products (a low density) are cheaper, so fewer sweeps
    assert sweep_budget(432, 12, 3) == (1, 1)
    dense, sparse = sweep_budget(12103, 1280, 25, 1.0), sweep_budget(12103, 1280, 25, 0.1)
    assert sparse[0] < dense[0] and sparse[1] <= dense[1]
    assert 1 <= min(sparse) and max(dense) == _nmf_solvers.MAX_SWEEPS
    for density in (0.01, 0.1, 0.5, 1.0):
        u, w = sweep_budget(5000, 256, 10, density)
        assert 1 <= u <= _nmf_solvers.MAX_SWEEPS and 1 <= w <= _nmf_solvers.MAX_SWEEPS
    # a fixed inner_sweeps replaces the rule: a different run from the default's
    A = relu_data(600, 64, seed=2)
    assert sweep_budget(600, 64, 5, 0.1) == (1, 1)  # a small problem: one sweep per half-step
    fixed, default = NMF(5, inner_sweeps=10, tol=0, max_iter=5).fit(A), NMF(5, tol=0, max_iter=5).fit(A)
    assert fixed.history_ != default.history_


def test_default_fit_ends_within_one_percent_of_the_converged_error():
    for A, k in ((relu_data(1500, 128), 8), (planted(1200, 80, 6, noise=0.05, seed=4)[0], 6)):
        converged_err = NMF(k, tol=0.0, max_iter=400).fit(A).reconstruction_err_
        m = NMF(k).fit(A)
        assert m.n_iter_ < 400
        assert m.reconstruction_err_ <= 1.01 * converged_err


def test_sparse_and_dense_fits_agree():
    A = relu_data()
    # the same sweep budget (by default it depends on the density, which only the sparse path sees)
    a, b = NMF(8, inner_sweeps=10), NMF(8, inner_sweeps=10)
    a.sparse_products, b.sparse_products = True, False
    a.fit(A)
    b.fit(A)
    assert a.sparse_used_ and not b.sparse_used_
    assert abs(a.reconstruction_err_ - b.reconstruction_err_) < 1e-3 * b.reconstruction_err_
    assert matched_cos(a.components_, b.components_) > 0.999


def test_planted_recovered_batch_and_minibatch():
    A, W = planted()
    for m in (NMF(6, seed=0), NMF(6, seed=0, batch_size=256, max_iter=400)):
        m.fit(A)
        assert matched_cos(m.components_, W) >= 0.99
        assert (m.components_ >= 0).all() and (m.encode(A) >= 0).all()


def test_times_recorded_per_iteration():
    m = NMF(4).fit(relu_data(200, 32))
    assert len(m.times_) == len(m.history_) == m.n_iter_
    assert all(b >= a for a, b in zip(m.times_, m.times_[1:], strict=False))


# ---------------------------------------------------------------------------------------------
# mini-batch NMF
# ---------------------------------------------------------------------------------------------
def test_minibatch_close_to_batch_error():
    A = relu_data()
    batch = NMF(10).fit(A).reconstruction_err_
    online = NMF(10, batch_size=200).fit(A)
    assert online.reconstruction_err_ < 1.03 * batch
    # The reported error is the real one of the final bank with exact codes (or very near it).
    U = online.encode(A)
    real = float(torch.linalg.vector_norm(A - U @ online.components_) / torch.linalg.vector_norm(A))
    assert real <= online.reconstruction_err_ * 1.001


def test_minibatch_does_not_depend_on_the_batching_beyond_init():
    # Same first batch (the init) and different later batching → nearly the same bank.
    A = relu_data(1200, 64)
    a = NMF(5, batch_size=400, max_iter=30, tol=0).fit(A)
    b = NMF(5, batch_size=400, max_iter=30, tol=0)
    b.fit(_ListStore([A[:400], A[400:700], A[700:]]))
    torch.testing.assert_close(a.components_, b.components_, rtol=1e-4, atol=1e-5)


def test_minibatch_all_zero_input_gives_zero_codes():
    with pytest.warns(RuntimeWarning, match="all-zero"):
        m = NMF(3, batch_size=10).fit(torch.zeros(40, 6))
    U = m.encode(torch.zeros(5, 6))
    assert torch.isfinite(m.components_).all() and (U == 0).all()


def test_batch_all_zero_input_gives_zero_codes():
    with pytest.warns(RuntimeWarning, match="all-zero"):
        m = NMF(3).fit(torch.zeros(40, 6))
    U = m.encode(torch.rand(5, 6))
    assert torch.isfinite(U).all() and (U == 0).all()


def test_minibatch_parameters_and_errors():
    with pytest.raises(ParameterError, match="batch_size"):
        NMF(3, batch_size=0).fit(torch.rand(20, 8))
    with pytest.raises(ActivationError, match="non-negative"):
        NMF(3, batch_size=5).fit(torch.rand(20, 8) - 0.5)
    with pytest.raises(ParameterError, match="torch.distributed"):
        NMF(3, distributed=True).fit(torch.rand(20, 8))
    U = NMF(3, batch_size=7).fit_encode(torch.rand(4, 5, 8))
    assert U.shape == (4, 5, 3) and (U >= 0).all()


class _ListStore:
    """A minimal store: iter_batches over a list of shards, re-chunked."""

    def __init__(self, parts: list[torch.Tensor]) -> None:
        self.parts = parts

    def iter_batches(self, b: int):
        yield from torch.cat(self.parts).split(b)

# ---------------------------------------------------------------------------------------------
# mini-batch NMF on an activation store
# ---------------------------------------------------------------------------------------------
def test_minibatch_nmf_on_store_equals_in_memory(tmp_path):
    A = relu_data(600, 32, seed=3)
    s = ActivationStore(tmp_path)
    for part in A.split(250):  # shards of 250, batches of 128: batches straddle shards
        s.append(part)
    a = NMF(6, batch_size=128, seed=1, max_iter=8).fit(A)
    b = NMF(6, batch_size=128, seed=1, max_iter=8).fit(s)
    assert torch.equal(a.components_, b.components_)
    assert a.history_ == b.history_
    with pytest.raises(ParameterError, match="in memory"):
        NMF(6, batch_size=128).fit_encode(s)


# ---------------------------------------------------------------------------------------------
# data-parallel (torch.distributed, gloo)
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, A: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = A.chunk(world)[rank]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = NMF(5, batch_size=100, distributed=True, seed=0).fit(shard)
        torch.save({"W": m.components_, "err": m.reconstruction_err_}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    A = relu_data(800, 40, seed=5)
    mp.spawn(_worker, args=(2, _free_port(), A, str(tmp_path)), nprocs=2, join=True)
    ref = NMF(5, batch_size=100, seed=0).fit(A)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["W"], r1["W"])  # identical bank on every rank
    W0, Wref = r0["W"], ref.components_
    rel = float(torch.linalg.vector_norm(W0 - Wref) / torch.linalg.vector_norm(Wref))
    assert rel < 1e-5
    assert abs(r0["err"] - ref.reconstruction_err_) < 1e-5 * ref.reconstruction_err_


# ---------------------------------------------------------------------------------------------
# the stopping rule, the final error, encoding
# ---------------------------------------------------------------------------------------------
def _errors(decreases: list[float], start: float = 1.0) -> list[float]:
    """Relative errors whose successive relative decreases are ``decreases``."""
    h = [start]
    for d in decreases:
        h.append(h[-1] * (1 - d))
    return h


def test_stopping_rule_extrapolates_geometric_decreases():
    tol = 1e-4
    # ratio ½: after a decrease d the rest is worth ≈ d, so it stops once d < 10·tol (not only below tol)
    h = _errors([6e-3 * 0.5**i for i in range(10)])
    stops = [t for t in range(2, len(h) + 1) if converged(h[:t], tol)]
    assert stops and stops[0] == 5  # decreases 6e-3, 3e-3, 1.5e-3, 7.5e-4: what remains ≈ 7.5e-4 < 10·tol
    # slowly shrinking decreases (ratio 0.95) predict a lot still to come: no early stop
    slow = _errors([5e-4 * 0.95**i for i in range(20)])
    assert not any(converged(slow[:t], tol) for t in range(2, len(slow) + 1))
    # a stall followed by faster progress (a ratio > 1 in the window) never stops on the prediction
    stall = _errors([3e-3, 1e-3, 9e-4, 1.2e-3, 8e-4])
    assert not any(converged(stall[:t], tol) for t in range(2, len(stall) + 1))
    # nor does a run that is slowing down (growing ratios 0.5, 0.56, 0.61 ...), however small d·r/(1 − r)
    slowing = _errors([3e-3, 1.5e-3, 8.4e-4, 5.1e-4, 3.7e-4])
    assert not any(converged(slowing[:t], tol) for t in range(2, len(slowing) + 1))
    # the plain rule: a decrease below tol (or an increase) stops at once; tol = 0 never stops
    assert converged(_errors([1e-2, 5e-5]), tol) and converged([1.0, 0.9, 0.9000001], tol)
    assert not any(converged(h[:t], 0.0) for t in range(2, len(h) + 1))


def test_default_stop_is_a_prefix_of_the_long_run_and_close_to_its_end():
    A = relu_data(1200, 96, seed=7)
    long = NMF(8, tol=0.0, max_iter=150).fit(A)
    m = NMF(8).fit(A)
    n = m.n_iter_
    assert m.history_ == long.history_[:n]  # the same deterministic run, stopped earlier
    # it stops no later than the plain "last decrease < tol" rule would, and not materially worse
    h = long.history_
    plain = next(t + 1 for t in range(1, len(h)) if h[t - 1] - h[t] < m.tol * h[t - 1])
    assert n <= plain
    assert m.reconstruction_err_ <= (1 + 1e-3) * h[plain - 1]


@pytest.mark.parametrize("sparse", [True, False])
def test_reported_error_from_the_last_products_is_the_real_one(sparse):
    A = relu_data(900, 64, seed=3)
    m = NMF(6)
    m.sparse_products = sparse
    U = m.fit_encode(A)
    assert m.sparse_used_ is sparse
    real = torch.linalg.vector_norm((A - U @ m.components_).double()) / torch.linalg.vector_norm(A.double())
    assert m.reconstruction_err_ == pytest.approx(float(real), rel=1e-5)


def test_data_mean_max_from_the_csr_copy():
    A = relu_data(300, 40)
    for sparse in (True, False):
        mean, top = DataProducts(A, sparse=sparse).mean_max()
        assert float(mean) == pytest.approx(float(A.double().mean()), rel=1e-6)
        assert top == float(A.max())


def test_normalise_rows_scales_the_cross_term_with_u():
    g = torch.Generator().manual_seed(0)
    Ut, W = torch.rand(4, 30, generator=g), 3 * torch.rand(4, 12, generator=g)
    A = torch.rand(30, 12, generator=g)
    Ut2, W2, R2 = normalise_rows(Ut, W, Ut @ A)
    torch.testing.assert_close(W2.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(Ut2.T @ W2, Ut.T @ W)
    torch.testing.assert_close(R2, Ut2 @ A)


def test_encode_blocks_equal_scipy_nnls_and_beat_the_fitted_codes(monkeypatch):
    from scipy.optimize import nnls

    A, _ = planted(600, 40, 5, seed=2)
    A[7] = 0.0  # an all-zero row gets all-zero codes
    m = NMF(5).fit(A)
    one = m.encode(A)
    monkeypatch.setattr(_nmf_encode, "ENCODE_ELEMS", 5 * 128)  # several blocks of 128 rows, one ragged
    U = m.encode(A)
    torch.testing.assert_close(U, one, rtol=1e-4, atol=1e-5 * float(one.max()))
    assert (U[7] == 0).all() and (U >= 0).all()
    W = m.components_.double().numpy()
    for i in (0, 127, 128, 599):  # both sides of a block boundary and the last (ragged) block
        ref, _ = nnls(W.T, A[i].double().numpy())
        np.testing.assert_allclose(U[i].double().numpy(), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    # the frozen-bank codes solve the NNLS, so they can only improve on the codes found during fit
    U_fit = m.fit_encode(A)
    err = torch.linalg.vector_norm(A - U @ m.components_)
    assert float(err) <= float(torch.linalg.vector_norm(A - U_fit @ m.components_)) * (1 + 1e-6)


def test_encode_compacts_the_rows_still_moving_and_solves_each_exactly(monkeypatch):
    """The sweeps go on over the unconverged rows only, and every row still ends at its NNLS solution."""
    from scipy.optimize import nnls

    g = torch.Generator().manual_seed(5)
    # a poorly conditioned bank (6 of 8 rows share a component; cond(W Wᵀ) ≈ 250): some rows need many
    # sweeps, others few
    base = torch.rand(1, 30, generator=g)
    W = (base + torch.rand(6, 30, generator=g)).to(torch.float64)
    W = torch.cat([W, torch.rand(2, 30, generator=g, dtype=torch.float64)])
    A = torch.rand(400, 30, generator=g, dtype=torch.float64) * (torch.rand(400, 1, generator=g) < 0.5)
    A += torch.rand(400, 8, generator=g, dtype=torch.float64) @ W
    widths = []
    real = _nmf_encode._hals_sweeper

    def spy(P, Q, X, floor, scaled=False):
        sweep = real(P, Q, X, floor, scaled)

        def counted():
            widths.append(X.shape[1])
            sweep()

        return counted

    monkeypatch.setattr(_nmf_encode, "_hals_sweeper", spy)
    U = nnls_codes(A, W)
    assert widths[0] == 400 and min(widths) < 400  # compacted at least once
    assert sum(widths) < 400 * len(widths)
    assert (U >= 0).all()
    # every row's residual is within 1e-5·‖A_i‖ of scipy's exact NNLS residual (the code before the
    # compaction: 3e-4 here)
    res = torch.linalg.vector_norm(A - U @ W, dim=1).numpy()
    ref = np.array([nnls(W.numpy().T, A[i].numpy())[1] for i in range(400)])
    assert (res - ref <= 1e-5 * torch.linalg.vector_norm(A, dim=1).numpy()).all()


def test_encode_raises_on_nan_and_inf_from_the_product_check():
    m = NMF(3).fit(planted(50, 12, 3, seed=1)[0])
    with pytest.raises(ParameterError, match="solver"):
        nnls_codes(planted(5, 12, 3)[0], m.components_, solver="cd")
    for bad in (float("nan"), float("inf")):
        A = planted(20, 12, 3, seed=3)[0]
        A[4, 5] = bad
        with pytest.raises(ActivationError, match="NaN/Inf"):
            m.encode(A)


def test_fit_reads_nan_and_inf_off_its_min_max_pass():
    for bad in (float("nan"), float("inf"), -float("inf")):
        A = planted(40, 12, 3, seed=4)[0]
        A[7, 2] = bad
        with pytest.raises(ActivationError, match="NaN/Inf"):
            NMF(3).fit(A)


def test_cross_product_in_row_blocks_equals_the_single_product(monkeypatch):
    g = torch.Generator().manual_seed(6)
    W, A = torch.rand(5, 30, generator=g), torch.rand(301, 30, generator=g)
    monkeypatch.setattr(_nmf_products, "PRODUCT_ELEMS", 64 * 30)  # blocks of 64 rows, the last one ragged
    P = cross_product(W, A)
    assert P.shape == (5, 301)
    torch.testing.assert_close(P, W @ A.T)


def test_encode_in_row_blocks_equals_one_block(monkeypatch):
    """Several blocks write their codes into strided slices of one [k, n] buffer: same codes as one block."""
    A = relu_data(700, 40, seed=11)
    W = NMF(6).fit(A).components_
    one = nnls_codes(A, W)
    assert one.shape == (700, 6) and one.T.is_contiguous()  # the transposed view of the [k, n] buffer
    monkeypatch.setattr(_nmf_encode, "ENCODE_ELEMS", 6 * 256)  # 256 rows a block: 3 blocks, the last ragged
    torch.testing.assert_close(nnls_codes(A, W), one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nnls_codes(A, W, "mu"), one, rtol=0, atol=1e-3 * float(one.max()))


def test_non_convergence_and_degenerate_concepts_are_warned_about() -> None:
    # #20 item 3: reaching max_iter and unused / duplicated concepts used to pass in silence
    from conceptlens.errors import ConceptLensWarning, ConvergenceWarning, DegenerateConceptsWarning

    g = torch.Generator().manual_seed(0)
    A = torch.rand(200, 3, generator=g) @ torch.rand(3, 12, generator=g)  # rank 3
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        d = NMF(3, max_iter=2, seed=0).fit(A)
    assert d.converged_ is False and issubclass(ConvergenceWarning, ConceptLensWarning)
    two = torch.zeros(200, 12)
    two[:, :2] = torch.rand(200, 2, generator=g)  # two directions only, six concepts asked for
    with pytest.warns(DegenerateConceptsWarning, match=r"k=6: concept pairs \[\(2, 3\)"):
        NMF(6, seed=0, max_iter=500).fit(two)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConceptLensWarning)
        d = NMF(3, seed=0, max_iter=2000).fit(A)  # a well-posed fit: no warning
    assert d.converged_ is True
