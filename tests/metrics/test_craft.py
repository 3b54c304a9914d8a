"""Tests of conceptlens.metrics.craft: C-Deletion, C-Insertion, C-μFidelity, prevalence, pixel AUCs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import spearmanr

import conceptlens as cl
from conceptlens.errors import ConceptLensError, ParameterError
from conceptlens.metrics import craft as mh
from helpers import GapLinear


def summing_head(A: torch.Tensor) -> torch.Tensor:
    """The model's (single) output is the sum of its activations: with W = I, the sum of the concepts."""
    return A.reshape(A.shape[0], -1).sum(1, keepdim=True)


# -------------------------------------------------------------------------------------------- known values
def test_deletion_and_insertion_have_the_hand_computed_auc_on_a_summing_model():
    U = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 5.0]])
    W = torch.eye(3)
    # image 0 ordered by its own codes: deletion [6, 3, 1, 0], insertion [0, 3, 5, 6]
    # image 1 ordered by the global importance [3, 2, 1]: deletion [6, 5, 5, 0], insertion [0, 1, 1, 6]
    local = torch.stack([U[0], torch.tensor([3.0, 2.0, 1.0])])
    auc_d, curve_d = mh.c_deletion_curve(U, W, summing_head, 0, local)
    auc_i, curve_i = mh.c_insertion_curve(U, W, summing_head, 0, local)
    assert torch.equal(curve_d, torch.tensor([[6.0, 3, 1, 0], [6, 5, 5, 0]], dtype=torch.float64))
    assert torch.equal(curve_i, torch.tensor([[0.0, 3, 5, 6], [0, 1, 1, 6]], dtype=torch.float64))
    assert torch.allclose(auc_d, torch.tensor([7 / 3, 13 / 3], dtype=torch.float64))
    assert torch.allclose(auc_i, torch.tensor([11 / 3, 5 / 3], dtype=torch.float64))
    # a global importance [k] is the same as repeating it for every image
    g = torch.tensor([3.0, 2.0, 1.0])
    assert torch.equal(mh.c_deletion_curve(U, W, summing_head, 0, g)[1][1], curve_d[1])


def test_spatial_codes_and_a_summing_model():
    """Codes with positions: removing a concept removes it at every position."""
    U = torch.zeros(1, 2, 2, 2)
    U[0, :, :, 0] = 1.0  # concept 0: total 4
    U[0, 0, 0, 1] = 2.0  # concept 1: total 2
    auc, curve = mh.c_deletion_curve(U, torch.eye(2), summing_head, 0, torch.tensor([1.0, 0.0]))
    assert curve.tolist() == [[6.0, 2.0, 0.0]]
    assert math.isclose(float(auc), (4 + 1) / 2)


def test_mu_fidelity_is_one_for_exact_attributions_of_a_summing_model():
    g = torch.Generator().manual_seed(0)
    U = torch.rand(4, 6, generator=g)
    r = mh.c_mu_fidelity_raw(U, torch.eye(6), summing_head, 0, U, n_subsets=200, seed=0)
    assert torch.allclose(r, torch.ones(4, dtype=torch.float64))
    # the reverse importance ranks the subsets backwards
    r2 = mh.c_mu_fidelity_raw(U, torch.eye(6), summing_head, 0, -U, seed=0)
    assert torch.allclose(r2, -torch.ones(4, dtype=torch.float64))


def test_mu_fidelity_is_seeded_and_uses_the_drop_probability():
    g = torch.Generator().manual_seed(1)
    U, W = torch.rand(3, 2, 2, 5, generator=g), torch.rand(5, 4, generator=g)
    h = GapLinear(4, 3).eval()
    imp = torch.rand(5, generator=g)
    a = mh.c_mu_fidelity_raw(U, W, h, 1, imp, seed=3)
    b = mh.c_mu_fidelity_raw(U, W, h, 1, imp, seed=3)
    c = mh.c_mu_fidelity_raw(U, W, h, 1, imp, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradient_input_is_optimal_for_a_linear_head():
    """Fel et al. 2023: with a linear f, Gradient × Input orders concepts best for deletion and insertion."""
    g = torch.Generator().manual_seed(2)
    N, k, C = 5, 4, 6
    U, W = torch.rand(N, 3, 3, k, generator=g), torch.rand(k, C, generator=g)
    h = GapLinear(C, 3, seed=1).eval()
    gi = mh.gradient_input(U, W, h, 2)
    # for GAP + linear, G×I is score × (W_i · w_c), the concept's contribution
    contrib = U.mean((1, 2)) * (W @ h.fc.weight[2].detach())
    assert torch.allclose(gi, contrib, atol=1e-6)
    best_d, _ = mh.c_deletion_curve(U, W, h, 2, gi)
    best_i, _ = mh.c_insertion_curve(U, W, h, 2, gi)
    for perm in itertools.permutations(range(k)):
        # importance = − position in perm: the concepts are removed in perm's order
        imp = torch.empty(k, dtype=torch.float64).scatter_(0, torch.tensor(perm), -torch.arange(k).double())
        d, _ = mh.c_deletion_curve(U, W, h, 2, imp)
        i, _ = mh.c_insertion_curve(U, W, h, 2, imp)
        assert bool((best_d <= d + 1e-6).all()) and bool((best_i >= i - 1e-6).all())
    assert torch.allclose(mh.c_mu_fidelity_raw(U, W, h, 2, gi), torch.ones(N, dtype=torch.float64))


def test_probability_score_and_offset():
    U = torch.tensor([[1.0, 2.0]])
    W = torch.eye(2)

    def head(A: torch.Tensor) -> torch.Tensor:
        return torch.stack([A.sum(-1), torch.zeros(A.shape[0])], 1)

    _, curve = mh.c_deletion_curve(U, W, head, 0, torch.tensor([0.0, 1.0]), score="probability")
    assert torch.allclose(curve, torch.sigmoid(torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64)))
    _, curve = mh.c_deletion_curve(U, W, head, 0, torch.tensor([0.0, 1.0]), offset=torch.tensor([1.0, 1.0]))
    assert curve.tolist() == [[5.0, 3.0, 2.0]]
    with pytest.raises(ParameterError):
        mh.c_deletion_curve(U, W, head, 0, torch.tensor([0.0, 1.0]), score="margin")


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 4, (3, 30), generator=g).double()
    b = torch.randn(3, 30, generator=g, dtype=torch.float64)
    ours = mh.spearman(a, b)
    for r in range(3):
        assert math.isclose(float(ours[r]), spearmanr(a[r].numpy(), b[r].numpy()).statistic, abs_tol=1e-12)
    assert torch.isnan(mh.spearman(torch.ones(5), torch.arange(5.0)))


def test_bad_inputs_raise():
    U, W = torch.rand(2, 3), torch.eye(3)
    with pytest.raises(ParameterError):
        mh.c_deletion_curve(U, W, summing_head, 0, torch.rand(4))
    with pytest.raises(ParameterError):
        mh.c_deletion_curve(U, torch.eye(4), summing_head, 0, torch.rand(3))
    with pytest.raises(ParameterError):
        mh.c_mu_fidelity_raw(U, W, summing_head, 0, torch.rand(3), drop_prob=1.5)
    with pytest.raises(ConceptLensError):
        mh.c_deletion_curve(U, W, summing_head, 0, torch.tensor([1.0, float("nan"), 0.0]))


# ------------------------------------------------------------------------------------------------ explainer
@pytest.fixture()
def fitted(tiny, tiny_images):
    split = cl.ModelSplit(tiny, "auto")
    return cl.ConceptExplainer(split, method="nmf", n_concepts=4, seed=0).fit(tiny_images, target=1)


def test_explainer_level_metrics_equal_the_raw_ones(fitted, tiny_images):
    ex = fitted
    A = ex.activations(tiny_images)
    U = ex.decomposition_.encode(A)
    raw_d = mh.c_deletion_curve(U, ex.concepts_, ex.split.h, 1, ex.importance_)[0].mean()
    assert math.isclose(mh.c_deletion(ex, tiny_images), float(raw_d), rel_tol=1e-9)
    raw_i = mh.c_insertion_curve(U, ex.concepts_, ex.split.h, 1, ex.importance_)[0].mean()
    assert math.isclose(mh.c_insertion(ex, A=A), float(raw_i), rel_tol=1e-9)
    h = mh.holistic(ex, tiny_images)
    assert set(h) == {"c_deletion", "c_insertion", "c_mu_fidelity"}
    assert -1.0 <= h["c_mu_fidelity"] <= 1.0
    # the explainer's linear importance orders like G×I on a GAP + linear head: optimal insertion
    gi = mh.gradient_input(U, ex.concepts_, ex.split.h, 1)
    assert mh.c_insertion(ex, A=A, importance=gi) >= mh.c_insertion(ex, A=A, importance=-gi)


def test_prevalence_and_reliability(fitted, tiny_images):
    prev, rel = mh.prevalence_reliability(fitted, tiny_images)
    assert prev.shape == rel.shape == (4,)
    assert math.isclose(float(prev.sum()), 1.0)
    ok = ~torch.isnan(rel)
    assert bool(((rel[ok] >= 0) & (rel[ok] <= 1)).all())
    assert bool((torch.isnan(rel) == (prev == 0)).all())


def test_closed_form_for_a_linear_head_equals_running_the_head(lite0_split) -> None:
    """The GAP + linear shortcut of the masked scores gives what running h on the masked maps gives."""
    from conceptlens.metrics.craft import _linear_of, _masked_scores

    split = lite0_split
    assert _linear_of(split.h) is not None and _linear_of(lambda A: split.h(A)) is None
    gen = torch.Generator().manual_seed(0)
    N, k = 3, 5
    U = torch.rand(N, 7, 7, k, generator=gen)
    D = torch.rand(k, split.activation_shape[-1], generator=gen)
    off = torch.rand(split.activation_shape[-1], generator=gen)
    masks = torch.rand(N, 4, k, generator=gen) < 0.5
    for score in ("logit", "probability"):
        fast = _masked_scores(U, D, split.h, 285, masks, off, score, 8)
        slow = _masked_scores(U, D, lambda A: split.h(A), 285, masks, off, score, 8)
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
