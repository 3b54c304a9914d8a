"""Tests of conceptlens.attribution.implicit: the NNLS implicit Jacobian, its autograd Function, the maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch import nn

import conceptlens as cl
from conceptlens.attribution.implicit import (
    NNLSCodes,
    implicit_codes,
    implicit_maps,
    nnls_jacobian,
)
from conceptlens.attribution.maps import upsample_maps
from conceptlens.decompose import NMF
from conceptlens.errors import ParameterError


def _bank(W: torch.Tensor) -> NMF:
    d = NMF(n_concepts=W.shape[0])
    d.components_ = W
    return d


def _exact_nnls(W: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """scipy's active-set NNLS (Lawson–Hanson): the oracle for u*(a)."""
    return torch.from_numpy(nnls(W.numpy().T, a.numpy(), maxiter=1000)[0])


def _stable_rows(W: torch.Tensor, n: int, seed: int, margin: float = 1e-2) -> torch.Tensor:
    """Rows ``a`` with a stable NNLS support: codes ≥ margin on it, gradients ≤ −margin off it, |S| ≥ 2."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < n:
        a = torch.rand(W.shape[1], generator=g, dtype=torch.float64)
        u = _exact_nnls(W, a)
        grad = (a - u @ W) @ W.T  # KKT: = 0 on the support, < 0 off it
        on = u > 0
        if int(on.sum()) >= 2 and int((~on).sum()) >= 1 and bool((u[on] > margin).all()) and \
                bool((grad[~on] < -margin).all()):
            rows.append(a)
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------ Jacobian
def test_implicit_jacobian_matches_finite_differences_of_exact_nnls():
    g = torch.Generator().manual_seed(0)
    k, C = 5, 9
    W = torch.rand(k, C, generator=g, dtype=torch.float64)
    A = _stable_rows(W, 6, seed=1)
    U = torch.stack([_exact_nnls(W, a) for a in A])
    J = nnls_jacobian(A, W, U)
    assert J.shape == (6, k, C)
    eps = 1e-6
    for r in range(A.shape[0]):
        cols = [(_exact_nnls(W, A[r] + eps * e) - _exact_nnls(W, A[r] - eps * e)) / (2 * eps)
                for e in torch.eye(C, dtype=torch.float64)]
        fd = torch.stack(cols, 1)  # [k, C]
        rel = float((J[r] - fd).norm() / fd.norm())
        assert rel < 1e-3, rel
        # off the support the codes do not move
        assert torch.count_nonzero(J[r][U[r] == 0]) == 0


def test_autograd_through_nnls_codes_is_the_implicit_jacobian_and_matches_our_own_finite_differences():
    g = torch.Generator().manual_seed(2)
    W = torch.rand(4, 7, generator=g, dtype=torch.float64)
    A = _stable_rows(W, 5, seed=3)
    d = _bank(W)
    U = implicit_codes(A, d)
    oracle = torch.stack([_exact_nnls(W, a) for a in A])
    assert torch.allclose(U, oracle, atol=1e-10)  # polished: the exact solution, not the HALS iterate
    J_auto = torch.autograd.functional.jacobian(lambda a: implicit_codes(a[None], d)[0], A[0])  # [k, C]
    J_exp = nnls_jacobian(A[:1], W, U[:1].detach())[0]
    assert torch.allclose(J_auto, J_exp, atol=1e-12)
    eps = 1e-6
    fd = torch.stack([(implicit_codes((A[0] + eps * e)[None], d)[0]
                       - implicit_codes((A[0] - eps * e)[None], d)[0])
                      / (2 * eps) for e in torch.eye(7, dtype=torch.float64)], 1)
    assert float((J_auto - fd).norm() / fd.norm()) < 1e-3


def test_nnls_function_passes_gradcheck_with_a_fixed_support():
    g = torch.Generator().manual_seed(4)
    W = torch.rand(3, 6, generator=g, dtype=torch.float64)
    A = _stable_rows(W, 4, seed=5)
    U0 = torch.stack([_exact_nnls(W, a) for a in A])
    A = A.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: NNLSCodes.apply(a, W, U0, True), (A,), eps=1e-6, atol=1e-8)


def test_backward_is_batched_over_rows_and_only_reaches_the_support():
    g = torch.Generator().manual_seed(6)
    W = torch.rand(4, 8, generator=g, dtype=torch.float64)
    A = _stable_rows(W, 10, seed=7).requires_grad_(True)
    U = implicit_codes(A, _bank(W))
    w = torch.rand(4, dtype=torch.float64, generator=g)
    (grad,) = torch.autograd.grad((U * w).sum(), A)
    J = nnls_jacobian(A.detach(), W, U.detach())
    assert torch.allclose(grad, torch.einsum("k,nkc->nc", w, J), atol=1e-12)


def test_singular_support_falls_back_to_the_pseudo_inverse():
    W = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)  # rows 0 = 1
    U = torch.tensor([[0.5, 0.5, 1.0]], dtype=torch.float64)
    J = nnls_jacobian(torch.zeros(1, 3, dtype=torch.float64), W, U)
    assert torch.isfinite(J).all()
    # minimum-norm split of the shared direction between the two identical concepts
    assert torch.allclose(J[0, 0], torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(J[0, 2], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def test_nnls_jacobian_checks_shapes():
    with pytest.raises(ParameterError):
        nnls_jacobian(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(3, 4))


# ------------------------------------------------------------------------------------------------ maps
class BiasFree(nn.Module):
    """conv–ReLU–conv–ReLU, GAP, linear, no biases: activations are positively homogeneous in the input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture(scope="module")
def biasfree():
    net = BiasFree().double()
    split = cl.ModelSplit(net, "auto", probe=torch.randn(2, 3, 12, 12, dtype=torch.float64))
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = NMF(n_concepts=3, seed=0).fit(split.g(x))
    return split, x, d


def test_input_maps_are_complete_for_a_homogeneous_network(biasfree):
    """g and the NNLS codes are positively homogeneous, so Σ_pixels x · ∂score_i/∂x = score_i (Euler)."""
    split, x, d = biasfree
    m = implicit_maps(split, d, x, level="input", rectify=False)
    assert m.shape == (4, 3, 12, 12)
    scores = implicit_codes(split.g(x), d).mean((1, 2))
    assert torch.allclose(m.sum((2, 3)), scores, rtol=1e-6, atol=1e-9)
    assert (implicit_maps(split, d, x, level="input") >= 0).all()


def test_layer_maps_are_grad_cam_with_the_explicit_jacobian(biasfree):
    split, x, d = biasfree
    A = split.g(x)  # [4, 6, 6, 8]
    m = implicit_maps(split, d, x, A=A)
    rows = A.reshape(-1, 8)
    J = nnls_jacobian(rows, d.components_, implicit_codes(rows, d).detach()).reshape(4, 36, 3, 8)
    alpha = J.mean(1) / 36  # mean over positions of ∂(mean_hw u_i)/∂a_p
    cam = torch.relu(torch.einsum("nhwc,nkc->nkhw", A, alpha))
    expected = upsample_maps(cam.permute(0, 2, 3, 1), (12, 12))
    assert torch.allclose(m, expected, atol=1e-10)


def test_explain_with_implicit_maps_and_errors(tiny, tiny_images):
    split = cl.ModelSplit(tiny, "auto")
    ex = cl.ConceptExplainer(split, method="nmf", n_concepts=3, seed=0).fit(tiny_images, target=0)
    e = ex.explain(tiny_images[:3], maps="implicit")
    assert e.maps.shape == (3, 3, 16, 16) and (e.maps >= 0).all() and e.maps.abs().sum() > 0
    up = ex.explain(tiny_images[:3]).maps  # upsample stays the default
    assert not torch.allclose(up, e.maps)
    with pytest.raises(ParameterError):
        ex.explain(tiny_images[:1], maps="gradcam")
    pca = cl.ConceptExplainer(split, method="pca", n_concepts=3).fit(tiny_images, target=0)
    with pytest.raises(ParameterError, match="NMF-like"):
        pca.explain(tiny_images[:1], maps="implicit")
    with pytest.raises(ParameterError):
        implicit_maps(split, ex.decomposition_, tiny_images, level="pixels")


def test_upsample_maps_is_reexported_by_the_explainer_module():
    from conceptlens import explainer

    assert explainer.upsample_maps is upsample_maps
    U = torch.rand(2, 3, 4, 5)
    assert upsample_maps(U, (6, 8)).shape == (2, 5, 6, 8)
    flat = upsample_maps(torch.rand(2, 5), (3, 3))
    assert flat.shape == (2, 5, 3, 3) and bool((flat == flat[..., :1, :1]).all())
    assert np.isfinite(flat.numpy()).all()
