"""Tests of encoding–decoding direction pairs (EDDP), its edits and its building blocks.

The planted-data check follows the paper's synthetic experiment: ``x = S α + D β + 10`` in 16 dimensions
with 3 concepts (unit-norm signal vectors ``S``) and 2 distractors ``D``; every row has exactly one
present concept, ``α ~ U(2.5, 5)`` for it and ``U(0, 2.5)`` for the others, ``β ~ U(0, 5)``.
Detectors are matched to planted concepts by the Hungarian algorithm on IoU; a signal vector's error is
``RMSE(√C ŝ/‖ŝ‖, √C s/‖s‖) = ‖ŝ/‖ŝ‖ − s/‖s‖‖₂`` (entries scaled to unit mean square, so 0.3 means a
cosine of 0.955).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from conceptlens.decompose import base
from conceptlens.decompose._eddp_losses import SignalStats
from conceptlens.decompose.eddp import (
    EDDP,
    UnlearnedHead,
    detector_losses,
    orthogonality_loss,
    remove_concepts,
    spherical_kmeans,
    unlearn,
)
from conceptlens.errors import ActivationError, ConceptLensError, HeadError, NotFittedError, ParameterError

C, K, ND = 16, 3, 2
Fitted = tuple[EDDP, torch.Tensor, torch.Tensor, torch.Tensor]


def planted(n: int = 6000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``X [n, 16]``, true signals ``S [3, 16]`` (unit rows) and presence ``[n, 3]`` (one per row)."""
    g = torch.Generator().manual_seed(seed)
    S = torch.nn.functional.normalize(torch.randn(K, C, generator=g), dim=1)
    D = torch.nn.functional.normalize(torch.randn(ND, C, generator=g), dim=1)
    present = torch.nn.functional.one_hot(torch.randint(K, (n,), generator=g), K).bool()
    lo = 2.5 * torch.rand(n, K, generator=g)
    alpha = torch.where(present, 2.5 + lo, lo)
    beta = 5 * torch.rand(n, ND, generator=g)
    return alpha @ S + beta @ D + 10, S, present


def match(Y: torch.Tensor, present: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching of detectors (``Y [n, k]`` booleans) to planted concepts by IoU."""
    inter = (Y[:, :, None] & present[:, None, :]).sum(0).double()
    union = (Y[:, :, None] | present[:, None, :]).sum(0).double()
    iou = (inter / union.clamp_min(1)).numpy()
    rows, cols = linear_sum_assignment(-iou)
    return rows, cols, iou[rows, cols]


def signal_rmse(est: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    a = torch.nn.functional.normalize(est.double(), dim=1)
    b = torch.nn.functional.normalize(true.double(), dim=1)
    return (a - b).norm(dim=1).numpy()


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    X, S, present = planted(seed=1)
    d = EDDP(n_concepts=K, seed=1).fit(X)
    return d, X, S, present


# ------------------------------------------------------------------------------------------------
# the paper's synthetic check
# ------------------------------------------------------------------------------------------------
def test_planted_directions_are_recovered(fitted: Fitted) -> None:
    d, X, S, present = fitted
    rows, cols, iou = match(d.encode(X) > 0.5, present)
    assert iou.min() >= 0.9, iou
    rmse = signal_rmse(d.encoding_directions_[rows], S[cols])
    assert rmse.max() <= 0.3, rmse
    # a random direction is nowhere near: the RMSE scale is meaningful
    rand = torch.randn(K, C, generator=torch.Generator().manual_seed(5))
    assert signal_rmse(rand, S).min() > 0.6


def test_filters_decode_their_own_signal(fitted: Fitted) -> None:
    d, X, _, present = fitted
    W, Sx = d.decoding_directions_, d.encoding_directions_
    G = W @ Sx.T
    # w_iᵀ s_i is the positive logit gap; the cross terms are much smaller (filters ≈ ⊥ other signals)
    assert bool((G.diag() > 0).all())
    off = G - torch.diag(G.diag())
    assert float(off.abs().max()) < 0.35 * float(G.diag().min())
    # the margins are 1/‖w‖
    torch.testing.assert_close(d.margins_, 1 / W.norm(dim=1))
    assert d.components_ is d.encoding_directions_


# ------------------------------------------------------------------------------------------------
# the Decomposition protocol
# ------------------------------------------------------------------------------------------------
def _small(seed: int = 0, **kw: object) -> tuple[EDDP, torch.Tensor]:
    X, _, _ = planted(n=960, seed=seed)
    A = X.reshape(60, 4, 4, C)
    return EDDP(n_concepts=K, seed=seed, max_iter=40, init_rows=960, polish_iter=20, **kw).fit(A), A  # type: ignore[arg-type]


def test_registered_and_constructible_like_the_explainer_does() -> None:
    cls = base.get("eddp")
    assert cls is EDDP
    d = cls(n_concepts=4, seed=3, **{"max_iter": 10, "signal": "weighted"})
    assert d.n_concepts == 4 and d.seed == 3 and d.signal == "weighted"
    assert cls.needs_head is False
    assert hasattr(d, "set_head") and d.set_head(lambda A: A.mean((1, 2))) is d
    params = d.get_params()
    assert params["max_iter"] == 10 and params["gamma"] == 1.1 and params["ura_weight"] == 0.25


def test_shapes_encode_decode() -> None:
    d, A = _small()
    Y = d.encode(A)
    assert Y.shape == (60, 4, 4, K)
    assert bool(((Y > 0) & (Y < 1)).all())
    assert d.decode(Y).shape == A.shape
    # decode is the signal model: the mean plus each response's deviation along its signal vector
    torch.testing.assert_close(d.decode(Y), (Y * d.decode_gain_) @ d.encoding_directions_ + d.decode_offset_)
    rows = A.reshape(-1, C)
    ybar = Y.reshape(-1, K).mean(0)
    torch.testing.assert_close(d.decode(ybar[None])[0], rows.mean(0), rtol=1e-4, atol=1e-5)
    # encode is the detector: σ(w·x − b), row by row
    torch.testing.assert_close(Y, torch.sigmoid(d.logits(A)))
    torch.testing.assert_close(d.encode(A[0, 0]), Y[0, 0])
    assert d.decoding_directions_.shape == (K, C) and d.biases_.shape == (K,)
    assert d.margins_.shape == (K,) and d.encoding_directions_.shape == (K, C)


def test_not_fitted_errors() -> None:
    d = EDDP(n_concepts=2)
    A = torch.rand(5, C)
    for call in (lambda: d.encode(A), lambda: d.decode(torch.rand(5, 2)), lambda: d.logits(A),
                 lambda: remove_concepts(A, d, [0]), lambda: unlearn(lambda a: a, d, 0)):
        with pytest.raises(NotFittedError, match="fit"):
            call()


def test_deterministic_by_seed() -> None:
    d1, A = _small(seed=0)
    d2, _ = _small(seed=0)
    for name in ("decoding_directions_", "biases_", "encoding_directions_"):
        assert torch.equal(getattr(d1, name), getattr(d2, name)), name
    d3 = EDDP(n_concepts=K, seed=7, max_iter=40, init_rows=960, polish_iter=20).fit(A)
    assert not torch.equal(d1.decoding_directions_, d3.decoding_directions_)


def test_state_roundtrip() -> None:
    d, A = _small()
    tensors = {k: v.clone() for k, v in d.state_tensors().items()}
    e = EDDP(**d.get_params())
    e.load_state_tensors(tensors)
    assert torch.equal(e.encode(A), d.encode(A))
    assert torch.equal(remove_concepts(A, e, [1]), remove_concepts(A, d, [1]))


def test_state_tensors_can_be_written_by_safetensors() -> None:
    """``components_`` aliases the signals: saving both names would be refused as shared memory."""
    from safetensors.torch import load, save

    d, A = _small()
    tensors = load(save({k: v.contiguous() for k, v in d.state_tensors().items()}))
    assert "components_" not in tensors
    e = EDDP(**d.get_params())
    e.load_state_tensors(tensors)
    assert e.components_ is e.encoding_directions_
    assert torch.equal(e.components_, d.components_) and torch.equal(e.encode(A), d.encode(A))


def test_bad_inputs_raise_library_errors() -> None:
    X = torch.rand(50, C)
    with pytest.raises(ParameterError, match="signal"):
        EDDP(n_concepts=2, signal="mean").fit(X)
    with pytest.raises(ParameterError, match="max_iter"):
        EDDP(n_concepts=2, max_iter=0).fit(X)
    with pytest.raises(ParameterError, match="n_concepts"):
        EDDP(n_concepts=C + 1).fit(X)
    with pytest.raises(ActivationError, match="NaN"):
        EDDP(n_concepts=2).fit(torch.full((50, C), float("nan")))
    with pytest.raises(ActivationError, match="constant"):
        EDDP(n_concepts=2).fit(torch.ones(50, C))
    # rank 2 data cannot hold 3 independent detectors
    low = torch.rand(50, 2) @ torch.rand(2, C)
    with pytest.raises(ActivationError, match="independent directions"):
        EDDP(n_concepts=3).fit(low)
    with pytest.raises(ParameterError, match="callable"):
        EDDP(n_concepts=2).set_head(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
def test_detector_losses_known_values() -> None:
    big = 30.0
    # every row fires exactly one detector with certainty: zero sparsity and max-activation loss
    logits = torch.full((4, 3), -big)
    logits[torch.arange(4), torch.tensor([0, 1, 2, 0])] = big
    L = detector_losses(logits, torch.tensor([0.5, 1.0, 2.0]), gamma=1.1, tau=0.5)
    assert float(L["sparsity"]) < 1e-6 and float(L["max_activation"]) < 1e-6
    assert float(L["max_margin"]) == pytest.approx((2 + 1 + 0.5) / 3)
    assert float(L["inactive"]) == 0.0
    # all detectors at y = ½: q uniform → H = log₂ 3 bits, −Σ q log₂ y = 1 bit
    L = detector_losses(torch.zeros(5, 3), torch.ones(3), gamma=1.0, tau=0.5)
    assert float(L["sparsity"]) == pytest.approx(np.log2(3), rel=1e-5)
    assert float(L["max_activation"]) == pytest.approx(1.0, rel=1e-5)
    # a dead detector costs its full (1/ν)·ν = 1, averaged over the k detectors
    dead = torch.zeros(5, 3)
    dead[:, 2] = -big
    L = detector_losses(dead, torch.ones(3), gamma=1.1, tau=0.5)
    assert float(L["inactive"]) == pytest.approx(1 / 3, rel=1e-4)


def test_orthogonality_loss_known_values() -> None:
    eye = torch.eye(3, 5)
    assert float(orthogonality_loss(eye, 2 * eye)) < 1e-5
    ones = torch.ones(3, 5)
    assert float(orthogonality_loss(ones, ones)) == pytest.approx(1.0, rel=1e-5)
    assert float(orthogonality_loss(ones[:1], ones[:1])) == 0.0


def test_pattern_estimator_matches_covariance_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    a = torch.randn(500, 2, generator=g, dtype=torch.float64) + x[:, :2]
    om = (torch.rand(500, 2, generator=g) > 0.3).double()
    st = SignalStats()
    st.set(SignalStats.batch(x, a, om), 500)
    P = torch.eye(6, dtype=torch.float64)
    got = st.pattern(P)
    for i in range(2):
        m = om[:, i].bool()
        xm, am = x[m].numpy(), a[m, i].numpy()
        cov = ((xm - xm.mean(0)) * (am - am.mean())[:, None]).mean(0)
        np.testing.assert_allclose(got[i].numpy(), cov / am.var(), rtol=1e-10)


def test_spherical_kmeans_finds_separated_directions() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 10, generator=g), dim=1)
    lab = torch.randint(4, (400,), generator=g)
    Z = torch.nn.functional.normalize(centres[lab] + 0.1 * torch.randn(400, 10, generator=g), dim=1)
    cent, got = spherical_kmeans(Z, 4, torch.Generator().manual_seed(1))
    conf = np.zeros((4, 4))
    np.add.at(conf, (got.numpy(), lab.numpy()), 1)
    r, c = linear_sum_assignment(-conf)
    assert conf[r, c].sum() == 400
    assert float((cent[r] * centres[c]).sum(1).min()) > 0.99


# ------------------------------------------------------------------------------------------------
# edits
# ------------------------------------------------------------------------------------------------
def test_remove_concepts_edits_only_where_the_concept_is(
    fitted: Fitted,
) -> None:
    d, X, _, _ = fitted
    Y = d.encode(X)
    for i in range(K):
        pos = Y[:, i] > 0.5
        quiet = Y[:, i] < 1e-3
        assert pos.sum() > 500 and quiet.sum() > 500
        # twice the logit gap (w_iᵀ s_i = 1: factor k lowers the logit by k·y_i) flips the positives
        f = 2 * float(d.decode_gain_[i])
        X2 = remove_concepts(X, d, [i], scale={i: f})
        Y2 = d.encode(X2)
        assert float((Y2[pos, i] < 0.5).float().mean()) >= 0.99
        # the change is along s_i only, by σ(w_iᵀx − b_i) · f (no ReLU clipping: X > 0 here)
        expect = (f * Y[:, i : i + 1]) * d.encoding_directions_[i]
        torch.testing.assert_close(X - X2, expect, atol=1e-4, rtol=1e-4)
        # rows without the concept barely move
        rel = (X2[quiet] - X[quiet]).norm(dim=1) / X[quiet].norm(dim=1)
        assert float(rel.max()) < 1e-3
        # the paper's scale w_iᵀs_i = 1: factor k lowers the concept's own logit by exactly k·y_i
        drop = d.logits(X)[:, i] - d.logits(remove_concepts(X, d, [], scale={i: 3.0}, relu=False))[:, i]
        torch.testing.assert_close(drop, 3 * Y[:, i], atol=1e-3, rtol=1e-3)
        # a factor of the concept's logit gap removes the typical positive (mean response below ½)
        gap = {i: float(d.decode_gain_[i])}
        assert float(d.encode(remove_concepts(X, d, [], scale=gap))[pos, i].mean()) < 0.5


def test_remove_concepts_relu_and_validation(fitted: Fitted) -> None:
    d, X, _, _ = fitted
    # a huge factor drives activations negative; the fit data were ≥ 0, so the default clamps at 0
    out = remove_concepts(X, d, [], scale={0: 1e4})
    assert float(out.min()) == 0.0
    assert float(remove_concepts(X, d, [], scale={0: 1e4}, relu=False).min()) < 0
    # shape is kept for [N, h, w, C]
    assert remove_concepts(X[:64].reshape(4, 4, 4, C), d, [0]).shape == (4, 4, 4, C)
    # removing nothing is the identity (after ReLU of non-negative data)
    torch.testing.assert_close(remove_concepts(X, d, []), X)
    with pytest.raises(ParameterError, match="out of range"):
        remove_concepts(X, d, [K])
    with pytest.raises(ParameterError, match="finite"):
        remove_concepts(X, d, [], scale={0: float("inf")})
    with pytest.raises(ActivationError, match="channels"):
        remove_concepts(X[:, :5], d, [0])
    with pytest.raises(ParameterError, match="EDDP"):
        remove_concepts(X, object(), [0])  # type: ignore[arg-type]


class GapLinear(nn.Module):
    """A tiny head: global average pooling then a linear layer, ``[B, h, w, C] → [B, n_out]``."""

    def __init__(self, n_out: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(C, n_out)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(n_out, C, generator=g))
            self.fc.bias.copy_(torch.randn(n_out, generator=g))

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        return self.fc(A.mean((1, 2)))


def test_unlearn_keeps_images_without_the_concept(
    fitted: Fitted,
) -> None:
    d, X, _, _ = fitted
    head = GapLinear()
    Y = d.encode(X)
    i = 0
    without = X[Y[:, i] < 1e-3][:400].reshape(25, 4, 4, C)
    with_ = X[Y[:, i] > 0.9][:400].reshape(25, 4, 4, C)
    g = float(d.decode_gain_[i])  # the logit gap: at the paper's scale, the factor that removes the concept
    h2 = unlearn(head, d, i, scale=g)
    assert isinstance(h2, UnlearnedHead) and isinstance(h2, nn.Module)
    with torch.no_grad():
        base_wo, new_wo = head(without), h2(without)
        base_w, new_w = head(with_), h2(with_)
    scale = float(base_wo.std())
    assert float((new_wo - base_wo).abs().max()) < 1e-3 * scale
    # on images with the concept the head's output moves, exactly by −g·mean_hw(y_i)·W s_i (linear head)
    assert float((new_w - base_w).abs().max()) > 0.1 * scale
    expect = -g * (Y[Y[:, i] > 0.9][:400].reshape(25, 16, K)[..., i].mean(1, keepdim=True)) * (
        d.encoding_directions_[i] @ head.fc.weight.T)
    torch.testing.assert_close(new_w - base_w, expect, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(h2.edit(with_), remove_concepts(with_, d, [], scale={i: g}))
    # a list of concepts and a factor
    h3 = unlearn(head, d, [0, 1], scale=2.0)
    torch.testing.assert_close(h3.edit(with_), remove_concepts(with_, d, [], scale={0: 2.0, 1: 2.0}))


# ------------------------------------------------------------------------------------------------
# uncertainty region alignment
# ------------------------------------------------------------------------------------------------
def test_ura_with_a_tiny_head_changes_the_result() -> None:
    X, _, _ = planted(n=960, seed=2)
    A = X.reshape(60, 4, 4, C)
    head = GapLinear(n_out=3, seed=1)
    kw = {"max_iter": 60, "init_rows": 960, "polish_iter": 20}
    plain = EDDP(n_concepts=K, seed=0, **kw).fit(A)
    d = EDDP(n_concepts=K, seed=0, **kw)
    d.set_head(head)
    d.fit(A)
    assert not torch.allclose(d.decoding_directions_, plain.decoding_directions_)
    assert all("ura_entropy" in h for h in d.loss_history_)
    assert all("ura_entropy" not in h for h in plain.loss_history_)
    assert bool(torch.isfinite(d.encoding_directions_).all())
    # the head's own parameters are never touched (no gradients accumulated, weights unchanged)
    assert all(p.grad is None for p in head.parameters())
    assert torch.equal(head.fc.weight, GapLinear(n_out=3, seed=1).fc.weight)
    # the constructor argument and set_head are the same thing
    d2 = EDDP(n_concepts=K, seed=0, head=head, **kw).fit(A)
    assert torch.equal(d2.decoding_directions_, d.decoding_directions_)
    # ura_weight = 0 switches it off
    off = EDDP(n_concepts=K, seed=0, head=head, ura_weight=0.0, **kw).fit(A)
    assert torch.equal(off.decoding_directions_, plain.decoding_directions_)


def test_ura_bad_head_is_a_head_error() -> None:
    X, _, _ = planted(n=160, seed=0)
    A = X.reshape(10, 4, 4, C)
    with pytest.raises(HeadError, match="logits"):
        EDDP(n_concepts=2, head=lambda a: a.mean((1, 2)).detach(), max_iter=4).fit(A)
    with pytest.raises(HeadError, match="failed"):
        EDDP(n_concepts=2, head=lambda a: a @ torch.ones(3, 3), max_iter=4).fit(A)
    assert issubclass(HeadError, ConceptLensError)


# ------------------------------------------------------------------------------------------------
# in the explainer
# ------------------------------------------------------------------------------------------------
def test_explainer_fits_eddp_with_the_split_head(tiny: nn.Module, tiny_images: torch.Tensor) -> None:
    import conceptlens as cl

    split = cl.ModelSplit(tiny, "auto")
    ex = cl.ConceptExplainer(split, method="eddp", n_concepts=3, seed=0,
                             method_params={"max_iter": 20, "polish_iter": 5})
    ex.fit(tiny_images, target=1)
    d = ex.decomposition_
    assert isinstance(d, EDDP) and d.head is not None
    assert ex.concepts_.shape == (3, split.activation_shape[-1])
    e = ex.explain(tiny_images[:2], maps="none")
    assert e.scores.shape == (2, 3)


@pytest.mark.slow
def test_real_activations_with_the_model_head(lite0_split: object, photo_acts: torch.Tensor) -> None:
    import conceptlens as cl

    split = lite0_split
    assert isinstance(split, cl.ModelSplit)
    d = EDDP(n_concepts=5, seed=0, max_iter=30, polish_iter=10, init_rows=400).set_head(split.h)
    d.fit(photo_acts)
    assert "ura_entropy" in d.loss_history_[-1]
    Y = d.encode(photo_acts)
    assert Y.shape == (*photo_acts.shape[:-1], 5) and bool(torch.isfinite(Y).all())
    assert all(p.grad is None for p in split.model.parameters())
    # the edit keeps post-ReLU activations non-negative and unlearn wraps the real head
    edited = remove_concepts(photo_acts, d, [0], scale={1: 3.0})
    assert edited.shape == photo_acts.shape and float(edited.min()) >= 0
    h2 = unlearn(split.h, d, 0)
    with torch.no_grad():
        torch.testing.assert_close(h2(photo_acts), split.h(remove_concepts(photo_acts, d, [0])))


def test_signal_scale_is_the_papers_and_decode_gain_the_logit_gap(fitted: Fitted) -> None:
    d, X, _, _ = fitted
    a = d.logits(X)
    pos = a > 0
    gap = torch.stack([a[pos[:, i], i].mean() - a[~pos[:, i], i].mean() for i in range(K)])
    own = (d.decoding_directions_ * d.encoding_directions_).sum(1)
    # edit_scale="unit" (the default): w_iᵀ s_i = 1, the paper's scale
    torch.testing.assert_close(own, torch.ones(K), rtol=1e-4, atol=1e-4)
    # decode keeps the logit-gap scale through its gain
    torch.testing.assert_close(d.decode_gain_, gap, rtol=1e-3, atol=1e-3)
