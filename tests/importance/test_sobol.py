"""Tests of conceptlens.importance.sobol: analytic indices, invariances, the concept path and its oracles."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conceptlens.errors import ActivationError, ConceptLensError, ParameterError, TargetError
from conceptlens.importance import sobol
from conceptlens.importance.base import Context
from helpers import GapLinear

ISHIGAMI_TOTAL = torch.tensor([0.5576, 0.4424, 0.2437], dtype=torch.float64)
ISHIGAMI_FIRST = torch.tensor([0.3139, 0.4424, 0.0], dtype=torch.float64)


def ishigami(u: torch.Tensor, a: float = 7.0, b: float = 0.1) -> torch.Tensor:
    x = -math.pi + 2 * math.pi * u.double()
    return torch.sin(x[:, 0]) + a * torch.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * torch.sin(x[:, 0])


class Counting:
    """Wraps a head and records the number of rows of every call."""

    def __init__(self, h) -> None:
        self.h, self.calls = h, []

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        self.calls.append(a.shape[0])
        return self.h(a)


def concept_world(N: int = 6, hw: tuple[int, ...] = (3, 3), k: int = 5, C: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(N, *hw, k, generator=g)
    W = torch.rand(k, C, generator=g)
    return U, W


# ---------------------------------------------------------------------------------------------- generic
def test_ishigami_total_indices_match_analytic_values():
    st = sobol.total_indices(ishigami, dim=3, n_designs=2**15, seed=0)
    assert st.dtype == torch.float64 and st.shape == (3,)
    assert torch.allclose(st, ISHIGAMI_TOTAL, atol=1e-2), st


def test_ishigami_first_order_indices_match_analytic_values():
    s1 = sobol.first_order_indices(ishigami, dim=3, n_designs=2**15, seed=0, batch_size=10_000)
    assert torch.allclose(s1, ISHIGAMI_FIRST, atol=1e-2), s1


def test_linear_model_indices_are_normalised_squared_weights():
    w = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    st = sobol.total_indices(lambda u: u.double() @ w, dim=4, n_designs=2**12, seed=3)
    expected = w**2 / (w**2).sum()
    exact = sobol.linear_total_indices(w)
    assert torch.allclose(exact, expected, atol=1e-15)
    assert exact.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(st, exact, atol=2e-2), (st, exact)
    # no interactions: the sampled total indices of a linear model sum to 1 too
    assert st.sum().item() == pytest.approx(1.0, abs=2e-2)


def test_linear_total_indices_with_input_variances_and_batches():
    coef = torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 0.0]])
    var = torch.tensor([1.0, 0.25, 3.0])
    got = sobol.linear_total_indices(coef, var)
    assert got.shape == (2, 3)
    assert torch.allclose(got[0], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert torch.equal(got[1], torch.zeros(3, dtype=torch.float64))  # constant output: nothing matters
    # an input uniform on [0, 2] has variance 4/12: the sampled estimator agrees with the closed form
    scale = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    w = torch.tensor([1.0, 1.5, 4.0], dtype=torch.float64)
    st = sobol.total_indices(lambda u: (u.double() * scale) @ w, dim=3, n_designs=2**12)
    assert torch.allclose(st, sobol.linear_total_indices(w, scale**2 / 12), atol=2e-2)
    with pytest.raises(ParameterError):
        sobol.linear_total_indices(coef, -1.0)


@settings(max_examples=50, deadline=None)
@given(
    # zero or well-scaled coefficients: squares of subnormal floats underflow to 0 (a float64 limit, not ours)
    coef=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3)),
                  min_size=1, max_size=8),
    scale=st.floats(1e-3, 1e3),
    data=st.data(),
)
def test_linear_closed_form_properties(coef, scale, data):
    c = torch.tensor(coef, dtype=torch.float64)
    got = sobol.linear_total_indices(c)
    assert (got >= 0).all() and (got <= 1).all()
    if (c != 0).any():
        assert got.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(sobol.linear_total_indices(-scale * c), got, atol=1e-12)  # scale / sign free
    perm = torch.tensor(data.draw(st.permutations(range(len(coef)))))
    assert torch.allclose(sobol.linear_total_indices(c[perm]), got[perm], atol=1e-15)


@pytest.mark.parametrize("a,b", [(3.5, 0.0), (-0.25, 100.0), (1e3, -7.0)])
def test_indices_are_invariant_to_affine_maps_of_the_output(a, b):
    ref = sobol.total_indices(ishigami, dim=3, n_designs=2**10, seed=1)
    got = sobol.total_indices(lambda u: a * ishigami(u) + b, dim=3, n_designs=2**10, seed=1)
    assert (got - ref).abs().max().item() < 1e-6


def test_same_seed_identical_other_seed_different_but_close():
    st0 = sobol.total_indices(ishigami, dim=3, n_designs=2**12, seed=0)
    st0b = sobol.total_indices(ishigami, dim=3, n_designs=2**12, seed=0, batch_size=777)
    st1 = sobol.total_indices(ishigami, dim=3, n_designs=2**12, seed=1)
    assert torch.equal(st0, st0b)
    assert not torch.equal(st0, st1)
    assert (st0 - st1).abs().max().item() < 3e-2


def test_evaluation_count_and_batches_are_bounded():
    calls: list[torch.Tensor] = []

    def f(u: torch.Tensor) -> torch.Tensor:
        calls.append(u.clone())
        return u.sum(1)

    sobol.total_indices(f, dim=5, n_designs=64, seed=0, batch_size=100)
    assert sum(c.shape[0] for c in calls) == 64 * (5 + 1)
    assert max(c.shape[0] for c in calls) <= 100
    pts = torch.cat(calls)
    assert pts.dtype == torch.float32 and pts.shape[1] == 5
    assert pts.min() >= 0 and pts.max() < 1
    # the stack is [A; C_1; …; C_5]: C_i differs from A in column i only
    A = pts[:64]
    for i in range(5):
        Ci = pts[64 * (i + 1) : 64 * (i + 2)]
        same = torch.ones(5, dtype=torch.bool)
        same[i] = False
        assert torch.equal(Ci[:, same], A[:, same])
        assert (Ci[:, i] != A[:, i]).all()


def test_design_is_scrambled_sobol_without_zero_row():
    A, B = sobol.sobol_design(4, 32, seed=0)
    assert A.shape == B.shape == (32, 4)
    assert (A.abs().sum(1) > 0).all()  # unlike unscrambled Halton/Sobol: no all-zero first row
    # a scrambled Sobol sample of 2^m points has one point in each of the 2^m strata of every column
    for col in torch.cat([A, B], 1).T:
        assert torch.equal(torch.sort((col * 32).floor()).values, torch.arange(32, dtype=torch.float64))
    A3, _ = sobol.sobol_design(4, 33, seed=0)  # not a power of two: still works
    assert A3.shape == (33, 4)


def test_constant_function_gives_zero_indices():
    st = sobol.total_indices(lambda u: torch.full((u.shape[0],), 3.0), dim=3, n_designs=16)
    assert torch.equal(st, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0},
        {"dim": -2},
        {"dim": 2.5},
        {"n_designs": 1},
        {"n_designs": 0},
        {"batch_size": 0},
        {"dim": 20000},
    ],
)
def test_bad_parameters_raise_parameter_error(kwargs):
    args = {"dim": 3, "n_designs": 16} | kwargs
    with pytest.raises(ParameterError):
        sobol.total_indices(lambda u: u.sum(1), **args)


def test_bad_function_output_is_reported():
    with pytest.raises(ParameterError, match=r"outputs \[m\]"):
        sobol.total_indices(lambda u: u, dim=3, n_designs=16)
    with pytest.raises(ParameterError, match="NaN"):
        sobol.total_indices(lambda u: torch.log(u[:, 0] - 0.5), dim=3, n_designs=16)


# ---------------------------------------------------------------------------------------------- concepts
def test_concept_indices_agree_with_closed_form_on_gap_linear_head():
    U, W = concept_world(N=6, k=5, C=8)
    h = GapLinear(8, 4)
    target = 2
    exact = sobol.concept_total_indices_linear(U, W, h.fc.weight[target], n_boot=200)
    sampled = sobol.concept_total_indices(U, W, h, target, n_designs=2**12, seed=0, n_boot=200)
    assert exact.n_evaluations == 0
    assert torch.allclose(exact.per_image.sum(1), torch.ones(6, dtype=torch.float64))
    important = exact.indices > 0.05
    assert important.sum() >= 2
    rel = (sampled.indices - exact.indices).abs() / exact.indices
    assert (rel[important] < 0.05).all(), (sampled.indices, exact.indices)
    # per image too (it is the same linear function per image)
    assert torch.allclose(sampled.per_image, exact.per_image, atol=2e-2)


def test_concept_indices_equal_the_generic_estimator_per_image():
    # a non-linear head: the vectorised path must reproduce total_indices on f_n(M) = h((U_n ⊙ M) W)_c
    U, W = concept_world(N=3, hw=(2, 3), k=4, C=6, seed=1)
    torch.manual_seed(0)
    nn = torch.nn
    h = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 3))
    res = sobol.concept_total_indices(U, W, h, 1, n_designs=64, seed=5, batch_size=50, n_boot=0)
    for n in range(3):
        def f(M: torch.Tensor, n: int = n) -> torch.Tensor:
            return h((U[n][None] * M[:, None, None, :]) @ W)[:, 1]

        ref = sobol.total_indices(f, dim=4, n_designs=64, seed=5)
        assert torch.allclose(res.per_image[n], ref, atol=1e-4), (res.per_image[n], ref)
    assert torch.isnan(res.ci_low).all() and torch.isnan(res.ci_high).all()  # n_boot=0


@pytest.mark.parametrize("batch_size,chunk_bytes", [(1, None), (7, None), (4096, 2000), (4096, None)])
def test_concept_indices_do_not_depend_on_batching(batch_size, chunk_bytes):
    U, W = concept_world(N=5, k=3, C=4, seed=2)
    h = GapLinear(4, 3)
    ref = sobol.concept_total_indices(U, W, h, 0, n_designs=16, batch_size=64, n_boot=50)
    counting = Counting(h)
    got = sobol.concept_total_indices(
        U, W, counting, 0, n_designs=16, batch_size=batch_size, n_boot=50, chunk_bytes=chunk_bytes
    )
    assert torch.allclose(got.per_image, ref.per_image, atol=1e-5)
    assert max(counting.calls) <= batch_size


@pytest.mark.parametrize("shape", [(4, 3), (4, 2, 2, 3), (4, 1, 5, 2, 3)])
def test_number_of_head_evaluations(shape):
    g = torch.Generator().manual_seed(0)
    U = torch.rand(*shape, generator=g)
    k = shape[-1]
    W = torch.rand(k, 6, generator=g)
    counting = Counting(GapLinear(6, 2))
    res = sobol.concept_total_indices(U, W, counting, 1, n_designs=8, batch_size=20, n_boot=10)
    n_images = shape[0]
    assert sum(counting.calls) == n_images * 8 * (k + 1) == res.n_evaluations
    assert res.indices.shape == res.ci_low.shape == res.ci_high.shape == (k,)
    assert res.per_image.shape == (n_images, k)
    assert res.indices.dtype == torch.float64


def test_concept_head_receives_masked_activations():
    # every row h sees must be (U_n ⊙ M) @ W (+ offset) for a mask M in [0, 1]^k
    U, W = concept_world(N=2, hw=(2, 2), k=3, C=5, seed=3)
    offset = torch.arange(5.0)
    seen: list[torch.Tensor] = []

    def h(a: torch.Tensor) -> torch.Tensor:
        seen.append(a.clone())
        return a.sum((1, 2))

    sobol.concept_total_indices(U, W, h, 0, n_designs=4, batch_size=1000, n_boot=0, offset=offset)
    acts = torch.cat(seen)  # [rows, 2, 2, 5]
    assert acts.shape == (2 * 4 * 4, 2, 2, 5)
    for a in acts:
        solved = None
        for n in range(2):
            # recover M by least squares on the 4 positions × 5 channels, then check the fit is exact
            X = (U[n].reshape(4, 1, 3) * W.T.reshape(1, 5, 3)).reshape(20, 3)
            M = torch.linalg.lstsq(X, (a - offset).reshape(20, 1)).solution[:, 0]
            if torch.allclose(X @ M, (a - offset).reshape(20), atol=1e-5):
                solved = M
        assert solved is not None
        assert solved.min() > -1e-5 and solved.max() < 1 + 1e-5


def test_head_runs_in_inference_mode_on_one_reused_buffer_and_matches_a_per_design_loop():
    U, W = concept_world(N=3, hw=(2, 3), k=4, C=6, seed=5)
    head = GapLinear(6, 3)
    ptrs: list[int] = []

    def h(a: torch.Tensor) -> torch.Tensor:
        assert torch.is_inference_mode_enabled()  # no autograd bookkeeping on the hot path
        ptrs.append(a.data_ptr())
        return head(a)

    res = sobol.concept_total_indices(U, W, h, 2, n_designs=8, batch_size=24, n_boot=0, chunk_bytes=None)
    assert len(ptrs) > 3 and len(set(ptrs)) == 1  # every call's activations are written into one buffer
    # the same numbers as evaluating every design of every image alone, in float64
    A, B = sobol.sobol_design(4, 8, 0)
    Ud, Wd = U.double(), W.double()
    hd = GapLinear(6, 3).double()
    y = torch.empty(3, 5, 8, dtype=torch.float64)  # [image, block (A, C_1..C_4), design]
    for i in range(3):
        for b in range(5):
            Mb = A.clone()
            if b:
                Mb[:, b - 1] = B[:, b - 1]
            for j in range(8):
                y[i, b, j] = hd(((Ud[i] * Mb[j]) @ Wd)[None])[0, 2]
    ref = ((y[:, :1] - y[:, 1:]).square().mean(-1) / 2) / y[:, 0].var(-1, correction=1)[:, None]
    torch.testing.assert_close(res.per_image, ref, rtol=2e-4, atol=1e-6)


def test_progress_bar_is_shown_on_request(capsys):
    U, W = concept_world(N=2, k=3, C=4)
    sobol.concept_total_indices(U, W, GapLinear(4, 3), 0, n_designs=8, batch_size=8, n_boot=0, progress=True)
    assert "Sobol" in capsys.readouterr().err


def test_concept_seeds_reproducible():
    U, W = concept_world(N=4, k=3, C=4, seed=4)
    h = GapLinear(4, 3)
    r0 = sobol.concept_total_indices(U, W, h, 0, n_designs=32, seed=0, n_boot=100)
    r0b = sobol.concept_total_indices(U, W, h, 0, n_designs=32, seed=0, n_boot=100)
    r1 = sobol.concept_total_indices(U, W, h, 0, n_designs=32, seed=1, n_boot=100)
    for field in ("indices", "per_image", "ci_low", "ci_high"):
        assert torch.equal(getattr(r0, field), getattr(r0b, field))
    assert not torch.equal(r0.indices, r1.indices)
    assert (r0.indices - r1.indices).abs().max() < 0.1


def test_bootstrap_interval_contains_mean_and_narrows_with_more_images():
    C = 16
    h = GapLinear(C, 3)
    widths = []
    for N in (10, 400):
        U, W = concept_world(N=N, hw=(2, 2), k=6, C=C, seed=5)
        res = sobol.concept_total_indices_linear(U, W, h.fc.weight[1], seed=0, n_boot=1000)
        assert (res.ci_low <= res.indices).all() and (res.indices <= res.ci_high).all()
        assert (res.ci_low < res.ci_high).all()
        widths.append(res.ci_high - res.ci_low)
    assert (widths[1] < widths[0]).all()
    # the standard error shrinks like 1/sqrt(N): 40x the images, about 1/6 of the width
    assert (widths[1] / widths[0]).mean() < 0.35


def test_spatial_coefficients_closed_form_matches_hand_computation():
    U, W = concept_world(N=3, hw=(2, 2), k=4, C=5, seed=6)
    w = torch.randn(5, generator=torch.Generator().manual_seed(0))
    res = sobol.concept_total_indices_linear(U, W, w, n_boot=0)
    c = U.double().mean((1, 2)) * (W.double() @ w.double())
    assert torch.allclose(res.per_image, c**2 / (c**2).sum(1, keepdim=True))


def test_concept_bad_inputs():
    U, W = concept_world(N=2, k=3, C=4)
    h = GapLinear(4, 3)
    with pytest.raises(ParameterError):
        sobol.concept_total_indices(U, W[:2], h, 0)
    with pytest.raises(ActivationError):
        sobol.concept_total_indices(U[0, 0, 0], W, h, 0)  # no image axis
    with pytest.raises(TargetError):
        sobol.concept_total_indices(U, W, h, 3, n_designs=4)
    with pytest.raises(TargetError):
        sobol.concept_total_indices(U, W, h, -1, n_designs=4)
    with pytest.raises(ParameterError):
        sobol.concept_total_indices(U, W, h, 0, n_designs=1)
    with pytest.raises(ParameterError):
        sobol.concept_total_indices(U, W, lambda a: a.sum((1, 2, 3)), 0, n_designs=4)  # not [B, K]
    bad = U.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ActivationError):
        sobol.concept_total_indices(bad, W, h, 0, n_designs=4)
    with pytest.raises(ParameterError):
        sobol.concept_total_indices_linear(U, W, torch.ones(5))
    with pytest.raises(ConceptLensError):
        sobol.concept_total_indices(U, W, h, 0, n_designs=4, batch_size=0)


# ---------------------------------------------------------------------------------------------- registry
class _Bank:
    def __init__(self, W: torch.Tensor) -> None:
        self.components_ = W

    def decode(self, U: torch.Tensor) -> torch.Tensor:
        return U @ self.components_


def test_registered_estimator_uses_closed_form_for_linear_heads_and_samples_otherwise():
    from conceptlens.importance import get

    U, W = concept_world(N=4, k=3, C=6, seed=7)
    h = GapLinear(6, 3)
    head = SimpleNamespace(weight=h.fc.weight.detach(), bias=h.fc.bias.detach())
    split = SimpleNamespace(h=h, linear_head=lambda: head, layer="x")
    ctx = Context(U=U, decomposition=_Bank(W), split=split, target=1, options={"n_boot": 100})
    imp = get("sobol")(ctx)
    exact = sobol.concept_total_indices_linear(U, W, h.fc.weight[1], n_boot=100)
    assert imp.method == "sobol"
    assert torch.allclose(imp.values.double(), exact.indices, atol=1e-6)
    assert torch.allclose(imp.weights, W @ h.fc.weight[1].detach(), atol=1e-5)
    assert imp.ci_low is not None and imp.ci_high is not None
    ctx2 = Context(U=U, decomposition=_Bank(W), split=split, target=1,
                   options={"n_boot": 100, "exact": False, "n_designs": 2**11})
    sampled = get("sobol")(ctx2)
    assert torch.allclose(sampled.values.double(), exact.indices, atol=2e-2)
    with pytest.raises(ParameterError):
        get("sobol")(Context(U=U, decomposition=_Bank(W), split=split, target=1, options={"n_design": 8}))


# ---------------------------------------------------------------------------------------------- overhead
@pytest.mark.slow
def test_overhead_over_bare_head_calls_is_reported():
    """k=10, N=8, 7×7×1280 activations, Linear(1280, 1000) GAP head, n_designs=32 (CRAFT's setting).

    Asserts that replaying the recorded h inputs gives back the same indices (the inputs are the ones
    the estimator needs), and prints the time of concept_total_indices over the time of those bare calls.
    """
    N, k, C = 8, 10, 1280
    g = torch.Generator().manual_seed(0)
    U = torch.rand(N, 7, 7, k, generator=g)
    W = torch.rand(k, C, generator=g)
    h = GapLinear(C, 1000).eval()
    recorded: list[torch.Tensor] = []

    def recording(a: torch.Tensor) -> torch.Tensor:
        recorded.append(a.clone())
        return h(a)

    with torch.no_grad():
        ref = sobol.concept_total_indices(U, W, recording, 3, n_designs=32, n_boot=0)
        assert sum(r.shape[0] for r in recorded) == N * 32 * (k + 1)
        bare, full = [], []
        for _ in range(3):
            t = time.perf_counter()
            for a in recorded:
                h(a)[:, 3]
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = sobol.concept_total_indices(U, W, h, 3, n_designs=32, n_boot=1000)
            full.append(time.perf_counter() - t)
    assert torch.equal(res.per_image, ref.per_image)
    overhead = min(full) / min(bare) - 1
    print(
        f"\nconcept Sobol k={k} N={N} 7x7x{C}: {min(full) * 1e3:.1f} ms, "
        f"bare h calls {min(bare) * 1e3:.1f} ms "
        f"({len(recorded)} calls of ≤{max(r.shape[0] for r in recorded)} rows), overhead {overhead:+.1%}"
    )
