"""FACE (KL-regularised NMF) on a tiny world with a known structure (:mod:`face_world`).

The world: activations ``A = U* W*`` built from 6 non-negative parts of decreasing energy, and a
GAP + MLP head that reads mostly the *low-energy* parts. A rank-3 NMF keeps the high-energy parts and
loses what the head looks at, so the KL term has something to fix. FACE's metrics are tested in
tests/metrics/test_face_metrics.py, its λ sweep in tests/workflows/test_sweep.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.decompose import get
from conceptlens.decompose.face import FACE, KLTerm, face_objective
from conceptlens.decompose.nmf import NMF, nndsvd_init
from conceptlens.errors import HeadError, ParameterError
from face_world import C, K, S, make_world

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def nmf_fit(face_toy) -> tuple[torch.Tensor, torch.Tensor]:
    A, _ = face_toy
    d = NMF(3, seed=0, tol=1e-5)  # converged: FACE at λ = 0 must reach NMF's optimum
    U = d.fit_encode(A)
    return U, d.components_


@pytest.fixture(scope="module")
def face_fit(face_toy) -> FACE:
    A, head = face_toy
    return FACE(3, kl_weight=0.05, head=head, seed=0).fit(A)


# ------------------------------------------------------------------------------------------------ FACE
def test_registered_and_head_protocol(face_toy) -> None:
    A, head = face_toy
    assert get("face") is FACE and FACE.nonnegative and FACE.needs_head
    d = FACE(3, kl_weight=1.0)
    assert d.set_head(head) is d and d.head is head
    p = d.get_params()
    assert "head" not in p and p["kl_weight"] == 1.0 and p["n_concepts"] == 3


def test_default_nmf_on_this_slowly_converging_toy_ends_within_1pc(face_toy) -> None:
    # k = 3 on 432 × 12 converges slowly (~150 iterations): the default stopping rule must not stop on the
    # way (tol = 1e-3 stops it after 31 iterations, 4 % above)
    A, _ = face_toy
    converged = NMF(3, seed=0, tol=0.0, max_iter=1000).fit(A).reconstruction_err_
    d = NMF(3, seed=0).fit(A)
    assert d.reconstruction_err_ <= 1.01 * converged
    assert NMF(3, seed=0, tol=1e-3).fit(A).reconstruction_err_ > 1.03 * converged


def test_lambda_zero_is_nmf(face_toy, nmf_fit) -> None:
    A, head = face_toy
    U0, W0 = nmf_fit
    nmf_obj = face_objective(A, U0, W0, head, 0.0)
    d = FACE(3, kl_weight=0.0, head=head, seed=0)
    U = d.fit_encode(A)
    assert abs(d.objective_["total"] - nmf_obj["total"]) <= 0.01 * nmf_obj["total"]
    # The reported objective is the objective of the returned factors.
    again = face_objective(A, U, d.components_, head, 0.0)
    assert again["total"] == pytest.approx(d.objective_["total"], rel=1e-4)


@pytest.mark.parametrize("lam", [0.05, 1.0])
def test_kl_below_nmf_and_objective_monotone(face_toy, nmf_fit, lam) -> None:
    A, head = face_toy
    U0, W0 = nmf_fit
    nmf_obj = face_objective(A, U0, W0, head, lam)
    d = FACE(3, kl_weight=lam, head=head, seed=0)
    U = d.fit_encode(A)
    assert d.objective_["kl"] <= nmf_obj["kl"]
    assert d.objective_["total"] < nmf_obj["total"]
    # The KL term has something to fix in this world: FACE removes a good part of it.
    assert d.objective_["kl"] < 0.8 * nmf_obj["kl"]
    tot = torch.tensor([e["total"] for e in d.history_], dtype=torch.float64)
    assert len(tot) > 2
    assert bool((tot[1:] <= tot[:-1] * (1 + 1e-6)).all()), "objective increased"
    assert float(U.min()) >= 0 and float(d.components_.min()) >= 0
    assert {"iter", "mse", "kl", "total", "time"} <= set(d.history_[0])


def test_same_seed_same_bank(face_toy) -> None:
    A, head = face_toy
    a = FACE(3, kl_weight=0.05, head=head, seed=3).fit(A).components_
    b = FACE(3, kl_weight=0.05, head=head, seed=3).fit(A).components_
    assert torch.equal(a, b)


def test_kl_gradient_matches_finite_differences() -> None:
    A, head = make_world(dtype=torch.float64, n=6)
    g = torch.Generator().manual_seed(5)
    k = 3
    U = torch.rand(6, S, S, k, generator=g, dtype=torch.float64)
    W = torch.rand(k, C, generator=g, dtype=torch.float64)
    term = KLTerm(head, A, batch_images=4)  # two batches: the sum over batches is exact
    _, gA = term.value_and_grad(U @ W)
    gU = gA @ W.T  # the chain rule the solver uses: ∂ΣKL/∂U = (∂ΣKL/∂Â) Wᵀ
    gW = U.reshape(-1, k).T @ gA.reshape(-1, C)
    eps = 1e-6
    for _ in range(3):
        V = torch.randn(U.shape, generator=g, dtype=torch.float64)
        fd = (term.value((U + eps * V) @ W).sum() - term.value((U - eps * V) @ W).sum()) / (2 * eps)
        assert float(fd) == pytest.approx(float((gU * V).sum()), rel=1e-6, abs=1e-10)
        V = torch.randn(W.shape, generator=g, dtype=torch.float64)
        fd = (term.value(U @ (W + eps * V)).sum() - term.value(U @ (W - eps * V)).sum()) / (2 * eps)
        assert float(fd) == pytest.approx(float((gW * V).sum()), rel=1e-6, abs=1e-10)


def test_encode_new_images_nonnegative_and_kl_aware(face_toy, face_fit) -> None:
    A, head = face_toy
    A_new, _ = make_world(seed=7, n=10)
    d = face_fit
    # The default encode is the authors' projection: plain NNLS codes, nothing from the head.
    assert d.encode_kl_steps == 0 and FACE.quick_params.get("encode_kl_steps", 0) == 0
    U_nnls = d.encode(A_new)
    from scipy.optimize import nnls

    Wd = d.components_.double().numpy()
    for a, u in zip(A_new.reshape(-1, C)[:20].double().numpy(), U_nnls.reshape(-1, 3)[:20].double(),
                    strict=True):
        best = nnls(Wd.T, a)[1]  # the least-squares residual norm at the NNLS optimum
        assert float((torch.from_numpy(a) - u @ d.components_.double()).norm()) == pytest.approx(
            best, rel=1e-4, abs=1e-6)
    d.encode_kl_steps = 10
    try:
        U_kl = d.encode(A_new)
    finally:
        d.encode_kl_steps = 0
    assert U_kl.shape == (10, S, S, 3) and float(U_kl.min()) >= 0 and float(U_nnls.min()) >= 0
    # NNLS codes are optimal for the Frobenius part; the KL steps then lower the full objective.
    obj_kl = face_objective(A_new, U_kl, d.components_, head, d.kl_weight)
    obj_nnls = face_objective(A_new, U_nnls, d.components_, head, d.kl_weight)
    assert obj_kl["total"] < obj_nnls["total"] and obj_kl["kl"] < obj_nnls["kl"]
    # Rows without image structure: plain NNLS, still non-negative.
    rows = d.encode(A_new.reshape(-1, C))
    assert rows.shape == (10 * S * S, 3) and float(rows.min()) >= 0


class _Detached(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(a.detach())


def _no_grad_head(head: nn.Module):
    def h(a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head(a)

    return h


def _argmax_head(head: nn.Module):
    def h(a: torch.Tensor) -> torch.Tensor:
        logits = head(a)
        return torch.nn.functional.one_hot(logits.argmax(1), K).to(a.dtype) + 0 * logits.detach()

    return h


def _half_detached(head: nn.Module):
    # Has a grad_fn but no dependence on A: the gradient is identically zero.
    def h(a: torch.Tensor) -> torch.Tensor:
        return head(a.detach()) + 0.0 * a.sum()

    return h


@pytest.mark.parametrize("wrap", [_Detached, _no_grad_head, _argmax_head, _half_detached])
def test_non_differentiable_head_is_a_head_error(face_toy, wrap) -> None:
    A, head = face_toy
    with pytest.raises(HeadError, match="differentiab"):
        FACE(3, kl_weight=0.1, head=wrap(head)).fit(A)


def test_missing_or_broken_head(face_toy) -> None:
    A, head = face_toy
    with pytest.raises(HeadError, match="split.h"):
        FACE(3).fit(A)
    with pytest.raises(HeadError, match=r"shape \[2, 12\]"):  # rows instead of images
        FACE(3, head=head).fit(A.reshape(-1, C))
    with pytest.raises(HeadError, match=r"logits \[B, K\]"):
        FACE(3, head=lambda a: a.sum()).fit(A)
    with pytest.raises(cl.ConceptLensError):
        FACE(3, head=head).fit(-A)
    with pytest.raises(ParameterError, match="kl_weight"):
        FACE(3, kl_weight=-1.0, head=head).fit(A)
    with pytest.raises(ParameterError, match="solver"):
        FACE(3, head=head, solver="sgd").fit(A)


def test_ours_beats_adam_at_equal_wall_time(face_toy) -> None:
    A, head = face_toy
    lam, budget = 0.05, 1.0
    FACE(3, kl_weight=lam, head=head, solver="adam", max_iter=2).fit(A)  # warm-up (lazy imports)
    ours = FACE(3, kl_weight=lam, head=head, seed=0, max_time=budget).fit(A)
    adam = FACE(3, kl_weight=lam, head=head, seed=0, solver="adam", max_time=budget).fit(A)
    assert ours.fit_time_ <= adam.fit_time_ + 0.2
    assert ours.objective_["total"] <= adam.objective_["total"]
    assert float(adam.components_.min()) >= 0
    # Adam's objective is not monotone in general, but it does improve on its NNDSVD start.
    assert adam.objective_["total"] < adam.history_[0]["total"]


def test_adam_baseline_is_torch_adam_on_the_authors_loss(face_toy) -> None:
    # Oracle: torch.optim.Adam + autograd on mean MSE + λ·batchmean KL, clamped after each step.
    A, head = face_toy
    lam, steps = 0.05, 60
    d = FACE(3, kl_weight=lam, head=head, solver="adam", max_iter=steps, tol=0.0).fit(A)
    X = A.reshape(-1, C)
    Ut, W = nndsvd_init(X, 3, "nndsvd", 0)
    U = Ut.T.contiguous().requires_grad_(True)
    W = W.clone().requires_grad_(True)
    opt = torch.optim.Adam([U, W], lr=5e-4)
    logp = torch.log_softmax(head(A), 1)
    for _ in range(steps):
        Ah = U @ W
        kl = torch.nn.functional.kl_div(torch.log_softmax(head(Ah.reshape(A.shape)), 1), logp,
                                        reduction="batchmean", log_target=True)
        loss = torch.nn.functional.mse_loss(Ah, X) + lam * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            U.clamp_(min=0)
            W.clamp_(min=0)
    assert d.history_[-1]["total"] == pytest.approx(float(loss.detach()), rel=1e-4)


def test_explainer_attaches_the_head(tiny, tiny_images) -> None:
    split = cl.ModelSplit(tiny, "features.3", probe=tiny_images[:1])  # after the last ReLU: ≥ 0
    ex = cl.ConceptExplainer(split, method="face", n_concepts=3, method_params={"kl_weight": 1.0}).fit(
        tiny_images, target=1
    )
    d = ex.decomposition_
    assert isinstance(d, FACE) and d.head is not None and float(ex.concepts_.min()) >= 0


def test_kl_term_pools_first_for_a_gap_linear_split_with_the_same_values_and_gradient() -> None:
    # ModelSplit.h of a GAP + linear head: the term evaluates h on the positions' mean and spreads the
    # gradient evenly; a plain callable (the same function, not a bound split) sees every position
    from helpers import TinyNet

    split = cl.ModelSplit(TinyNet().eval(), "features")
    g = torch.Generator().manual_seed(0)
    A = split.g(torch.randn(6, 3, 32, 32, generator=g))
    pooled, plain = KLTerm(split.h, A, 4), KLTerm(lambda a: split.h(a), A, 4)
    assert pooled.pooled and not plain.pooled
    A_hat = A * torch.rand(A.shape, generator=g) + 0.05 * torch.rand(A.shape, generator=g)
    kl_p, g_p = pooled.value_and_grad(A_hat)
    kl_f, g_f = plain.value_and_grad(A_hat)
    assert torch.allclose(kl_p, kl_f, rtol=1e-5, atol=1e-9) and bool((kl_f > 1e-4).all())
    assert g_p.shape == A_hat.shape
    assert torch.allclose(g_p, g_f, rtol=1e-4, atol=1e-7 * float(g_f.abs().max()))
    assert torch.allclose(pooled.value(A_hat.reshape(-1, A.shape[-1])), kl_f, rtol=1e-5, atol=1e-9)


def test_squared_error_from_the_gram_products_or_the_residual() -> None:
    from conceptlens.decompose import face as face_mod

    g = torch.Generator().manual_seed(1)
    Ut, W = torch.rand(4, 3000, generator=g), torch.rand(4, 50, generator=g)
    other = 1.5 * (Ut.T @ W)  # not the factors' product: shows which way the error was computed
    for noise, gram in ((1.0, True), (0.01, False)):  # relative errors of about 0.4 and 0.003
        X = (Ut.T @ W) * (1 + noise * torch.rand(3000, 50, generator=g))
        n2 = float((X.double() ** 2).sum())
        exact = float(((X.double() - (Ut.T @ W).double()) ** 2).sum())
        assert face_mod._squared_error(X, Ut.T @ W, (Ut, W, n2)) == pytest.approx(exact, rel=1e-5)
        via_other = float(((X.double() - other.double()) ** 2).sum())
        # above 4 % of ‖X‖² the Gram products (Â itself unused); below, the residual of the Â given
        want = exact if gram else via_other
        assert face_mod._squared_error(X, other, (Ut, W, n2)) == pytest.approx(want, rel=1e-5)
        assert face_mod._squared_error(X, other, None) == pytest.approx(via_other, rel=1e-6)
