"""NMF encode reaches the NNLS optimum of every row (issue #20, item 2): scipy's Lawson–Hanson is the oracle.

The old encoder stopped a row once two sweeps moved it by ≤ 3e-5 × the largest code in its block: on the
ill-conditioned bank below it left rows 6 % above scipy's objective (float64) with 229 of 400 supports
wrong, and its codes depended on the other rows of the block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from conceptlens.attribution.implicit import implicit_codes, nnls_jacobian
from conceptlens.decompose import NMF, _nmf_encode
from conceptlens.decompose._nmf_encode import exact_nnls, kkt_residual, kkt_tolerance
from conceptlens.decompose.nmf import nnls_codes

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


def collinear_bank(k: int = 12, C: int = 48, eps: float = 2.5e-2, seed: int = 0) -> torch.Tensor:
    """``[k, C]`` float64 non-negative unit rows; rows 0 and 1 nearly collinear (cond(WWᵀ) ≈ 1e5)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(k, C, generator=g, dtype=torch.float64)
    W[1] = W[0] + eps * torch.rand(C, generator=g, dtype=torch.float64)
    return W / W.norm(dim=1, keepdim=True)


def random_bank(k: int = 10, C: int = 40, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(k, C, generator=g, dtype=torch.float64) * (torch.rand(k, C, generator=g) < 0.5)
    return W / W.norm(dim=1, keepdim=True)


def rows_for(W: torch.Tensor, n: int = 300, seed: int = 1) -> torch.Tensor:
    """Sparse non-negative mixtures of the bank plus noise: codes with varied supports, residual > 0."""
    g = torch.Generator().manual_seed(seed)
    k, C = W.shape
    U = torch.rand(n, k, generator=g, dtype=torch.float64) * (torch.rand(n, k, generator=g) < 0.4)
    return U @ W + 0.05 * torch.rand(n, C, generator=g, dtype=torch.float64)


def cond(W: torch.Tensor) -> float:
    ev = torch.linalg.eigvalsh(W.double() @ W.double().T)
    return float(ev[-1] / ev[0])


def scipy_codes(A: torch.Tensor, W: torch.Tensor) -> np.ndarray:
    Wt = W.double().numpy().T
    return np.stack([nnls(Wt, a, maxiter=50 * W.shape[0])[0] for a in A.double().numpy()])


def objective(A: torch.Tensor, U: torch.Tensor | np.ndarray, W: torch.Tensor) -> np.ndarray:
    U = torch.as_tensor(U).double()
    return 0.5 * ((A.double() - U @ W.double()) ** 2).sum(1).numpy()


def assert_nnls_optimal(A: torch.Tensor, W: torch.Tensor, U: torch.Tensor, rel: float = 1e-6) -> None:
    """Every row: objective within ``rel`` of scipy's (relative) and the same support."""
    ref = scipy_codes(A, W)
    f, f_ref = objective(A, U, W), objective(A, ref, W)
    excess = (f - f_ref) / f_ref
    assert excess.max() <= rel, f"worst excess {excess.max():.3g} on row {excess.argmax()}"
    wrong = ((U.double().numpy() > 0) != (ref > 0)).any(1)
    assert not wrong.any(), f"{int(wrong.sum())} supports differ from scipy's, e.g. row {wrong.argmax()}"


def test_ill_conditioned_bank_reaches_scipy_objective_and_support():
    W = collinear_bank()
    assert cond(W) >= 1e5
    A = rows_for(W)
    assert_nnls_optimal(A, W, nnls_codes(A, W))


def test_mixed_scale_rows_each_converge_at_their_own_scale():
    for W in (collinear_bank(), random_bank()):
        A = rows_for(W, seed=2)
        A[:100] *= 1e-3
        A[100:200] *= 1e3
        U = nnls_codes(A, W)
        assert_nnls_optimal(A, W, U)
        # the rule is scale-free: rows scaled by a power of two (exact in floating point) get their codes
        # scaled by it, bit for bit (the same sweeps, the same stopping decisions, the same finish)
        for s in (2.0**-10, 2.0**10):
            assert torch.equal(nnls_codes(A * s, W), U * s)


def test_well_conditioned_random_bank_matches_scipy():
    W = random_bank()
    assert cond(W) < 1e3
    A = rows_for(W, seed=4)
    assert_nnls_optimal(A, W, nnls_codes(A, W))


def test_float32_codes_are_the_nnls_optimum_of_the_float32_problem():
    """float32 rows and bank (the real activations' dtype): scipy on the same rounded numbers; κ = 1e7 too
    (a float32 Gram cannot tell that pair from a duplicate: the tolerance and the finish work in float64)."""
    for W in (collinear_bank(), collinear_bank(eps=3e-3), random_bank()):
        W32 = W.float()
        A32 = rows_for(W, seed=5).float()
        U = nnls_codes(A32, W32)
        assert U.dtype == torch.float32
        # float32's ε bounds the excess by 5e-10·‖a‖², ≤ 2e-6 of f* on these rows (f* ≥ 2.5e-4·‖a‖²)
        assert_nnls_optimal(A32.double(), W32.double(), U, rel=1e-5)


def test_a_row_gets_the_same_codes_alone_as_within_a_bigger_block(monkeypatch):
    W = collinear_bank()
    A = rows_for(W, n=400, seed=6)
    A[::3] *= 1e-3  # small rows among big ones: the old rule judged them by the block's largest code
    whole = nnls_codes(A, W)
    for sel in (slice(0, 400, 3), slice(5, 9), slice(399, 400)):
        alone = nnls_codes(A[sel], W)
        torch.testing.assert_close(alone, whole[sel], rtol=1e-9, atol=0.0)
        assert torch.equal(alone > 0, whole[sel] > 0)
    monkeypatch.setattr(_nmf_encode, "ENCODE_ELEMS", 12 * 64)  # blocks of 64 rows, the last one ragged
    torch.testing.assert_close(nnls_codes(A, W), whole, rtol=1e-9, atol=0.0)
    # float32 on a well-conditioned bank, where rows end by the residual test, not the exact finish: a row
    # alone used to go to the finish (no other row passed at its check) and differed by 1e-4 from itself
    # in a block (CRAFT's per-position test)
    W32 = random_bank().float()
    A32 = rows_for(random_bank(), n=300, seed=14).float()
    whole = nnls_codes(A32, W32)
    for i in (0, 17, 299):
        # (float32 rounding differs between a one-column and a wide product: 1e-7 of the codes)
        torch.testing.assert_close(nnls_codes(A32[i : i + 1], W32), whole[i : i + 1], rtol=1e-5,
                                   atol=1e-6 * float(whole.max()))


def test_nmf_encode_uses_the_exact_encoder():
    W = collinear_bank()
    m = NMF(W.shape[0])
    m.components_ = W
    A = rows_for(W, n=120, seed=7)
    assert_nnls_optimal(A, W, m.encode(A))


def test_kkt_residual_is_zero_at_the_optimum_and_the_tolerance_follows_the_conditioning():
    W = collinear_bank()
    A = rows_for(W, n=50, seed=8)
    P, Q = W @ A.T, W @ W.T
    X = torch.from_numpy(scipy_codes(A, W)).T
    r = kkt_residual(P, Q, X)
    assert r.shape == (50,) and float(r.max()) <= 1e-9 * float(P.norm(dim=0).max())
    # a feasible non-optimal point has a positive residual; so does moving a zero code up
    assert (kkt_residual(P, Q, X * 1.01) > 0).all()
    ev = torch.linalg.eigvalsh(Q)
    assert kkt_tolerance(Q, torch.float64) == pytest.approx(
        np.sqrt(_nmf_encode.ENCODE_EXCESS[torch.float64] * float(ev[0] / ev[-1])), rel=1e-6)
    assert kkt_tolerance(Q, torch.float32) > kkt_tolerance(Q, torch.float64)


def test_exact_finish_reaches_scipy_from_any_starting_support():
    """Block principal pivoting alone: from all-passive, all-active and random supports."""
    W = collinear_bank(k=10)
    A = rows_for(W, n=60, seed=9)
    ref = scipy_codes(A, W)
    P, Q = W @ A.T, W @ W.T
    g = torch.Generator().manual_seed(0)
    for start in (torch.ones(10, 60, dtype=torch.bool), torch.zeros(10, 60, dtype=torch.bool),
                  torch.rand(10, 60, generator=g) < 0.5):
        X, ok = exact_nnls(P, Q, start)
        assert ok.all()
        np.testing.assert_allclose(X.T.numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())
        assert np.array_equal(X.T.numpy() > 0, ref > 0)


def test_exact_finish_touches_few_rows_on_a_well_conditioned_bank(monkeypatch):
    finished: list[int] = []
    real = _nmf_encode.exact_nnls

    def spy(P, Q, passive):
        finished.append(P.shape[1])
        return real(P, Q, passive)

    monkeypatch.setattr(_nmf_encode, "exact_nnls", spy)
    W = random_bank()
    nnls_codes(rows_for(W, n=2000, seed=10), W)
    assert sum(finished) <= 0.02 * 2000
    # an ill-conditioned bank sends the rows that HALS cannot settle to the finish
    finished.clear()
    W = collinear_bank()
    nnls_codes(rows_for(W, n=300, seed=11), W)
    assert sum(finished) > 0


def test_implicit_maps_take_scipy_support_on_an_ill_conditioned_bank():
    """The implicit Jacobian belongs to scipy's active set: zero rows exactly off scipy's support."""
    W = collinear_bank()
    m = NMF(W.shape[0])
    m.components_ = W
    A = rows_for(W, n=200, seed=12)
    ref = scipy_codes(A, W)
    U = implicit_codes(A, m)
    assert np.array_equal(U.numpy() > 0, ref > 0)
    np.testing.assert_allclose(U.numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    J = nnls_jacobian(A, W, U)  # [n, k, C]
    on = J.abs().amax(2).numpy() > 0
    assert np.array_equal(on, ref > 0)


def test_dead_and_duplicated_concepts_do_not_stall_the_encoder(monkeypatch):
    """A zero bank row gets zero codes; a duplicated row makes WWᵀ singular, which must not send every row
    to the exact finish (the gradient lies in WWᵀ's range: its zero eigenvalue is not counted)."""
    finished: list[int] = []
    real = _nmf_encode.exact_nnls

    def spy(P, Q, passive):
        finished.append(P.shape[1])
        return real(P, Q, passive)

    monkeypatch.setattr(_nmf_encode, "exact_nnls", spy)
    for dtype in (torch.float64, torch.float32):
        W = random_bank()
        W[3], W[5] = W[2], 0.0
        W = W.to(dtype)
        A = rows_for(random_bank(), n=1000, seed=13).to(dtype)
        U = nnls_codes(A, W)
        assert (U[:, 5] == 0).all()
        f, f_ref = objective(A, U, W), objective(A, scipy_codes(A, W), W)
        assert ((f - f_ref) / f_ref).max() <= 1e-5
    assert sum(finished) <= 0.02 * 2000


def test_real_activations_codes_are_scipy_optimum_row_by_row(photo_acts: torch.Tensor) -> None:
    """EfficientNet-Lite0's activations (float32, ~10 % non-zero) with a fitted k = 25 bank: every row's
    objective and support equal scipy's (the residual test alone left 1 of 637 supports with a tiny extra
    code)."""
    A = photo_acts.reshape(-1, photo_acts.shape[-1]).float()
    W = NMF(25, seed=0).fit(A).components_
    U = nnls_codes(A, W)
    assert_nnls_optimal(A.double(), W.double(), U, rel=1e-5)
