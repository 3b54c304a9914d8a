"""EDDP's paper loss set (issue #20 item 6): the two extra terms, the two-phase schedule, the edit scale,
and the planted generators they are judged on.

Hand computations use tiny tensors; the recovery checks run on :func:`conceptlens.world.planted.planted_pairs`
with one intra-op thread, so their verdicts do not depend on the machine's load.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import conceptlens.decompose.eddp as eddp_mod
from conceptlens.decompose._eddp_fit import LOSS_SETS, margin_scale
from conceptlens.decompose._eddp_losses import orthonormalise, self_weighted_mean
from conceptlens.decompose.eddp import EDDP, extra_sparsity_losses
from conceptlens.errors import ParameterError
from conceptlens.world.planted import decoding_iou, encoding_cosine, match_by_iou, planted_pairs

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


# ------------------------------------------------------------------------------------------------
# the new loss terms, by hand
# ------------------------------------------------------------------------------------------------
def test_self_weighted_mean_by_hand() -> None:
    v = torch.tensor([1.0, 2.0], dtype=torch.float64)
    # Σ v⁵ / Σ v⁴ = (1 + 32) / (1 + 16)
    assert float(self_weighted_mean(v)) == pytest.approx(33 / 17, rel=1e-12)
    # p = 0 is the plain mean; equal values give that value; all zeros give 0
    assert float(self_weighted_mean(v, p=0.0)) == pytest.approx(1.5, rel=1e-12)
    assert float(self_weighted_mean(torch.full((4,), 0.3))) == pytest.approx(0.3, rel=1e-6)
    assert float(self_weighted_mean(torch.zeros(3))) == 0.0
    # tiny values do not underflow: the ratio is scale-equivariant
    assert float(self_weighted_mean(1e-30 * v)) == pytest.approx(1e-30 * 33 / 17, rel=1e-6)
    # its gradient is that of Σ v⁵ / Σ v⁴
    w = v.clone().requires_grad_(True)
    self_weighted_mean(w).backward()
    num, den = 33.0, 17.0
    expect = [(5 * x**4 * den - num * 4 * x**3) / den**2 for x in (1.0, 2.0)]
    np.testing.assert_allclose(w.grad.numpy(), expect, rtol=1e-12)


def test_extra_sparsity_losses_by_hand() -> None:
    # y = σ(logits) = [[.75, .25], [.5, .5]]
    logits = torch.tensor([[math.log(3), -math.log(3)], [0.0, 0.0]], dtype=torch.float64)
    L = extra_sparsity_losses(logits)
    rho = (0.625, 0.375)  # mean response of each detector over the two rows
    excess = 2 * (rho[0] ** 5 + rho[1] ** 5) / (rho[0] ** 4 + rho[1] ** 4)
    assert float(L["excess_activity"]) == pytest.approx(excess, rel=1e-12)
    h1 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))  # row 1: q = y (its responses sum to 1)
    h2 = 1.0  # row 2: q = (½, ½)
    assert float(L["sparsity_bound"]) == pytest.approx((h1**5 + h2**5) / (h1**4 + h2**4), rel=1e-12)
    # balanced detectors cost exactly 1; one detector claiming every row costs more
    balanced = torch.tensor([[30.0, -30.0], [-30.0, 30.0]])
    greedy = torch.tensor([[30.0, -30.0], [30.0, -30.0]])
    assert float(extra_sparsity_losses(balanced)["excess_activity"]) == pytest.approx(1.0, abs=1e-6)
    assert float(extra_sparsity_losses(greedy)["excess_activity"]) == pytest.approx(2.0, abs=1e-6)
    assert float(extra_sparsity_losses(balanced)["sparsity_bound"]) < 1e-6


def test_orthonormalise_is_the_polar_factor() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 7, generator=g, dtype=torch.float64)
    u = orthonormalise(v)
    torch.testing.assert_close(u @ u.T, torch.eye(3, dtype=torch.float64))
    # scipy's polar decomposition of vᵀ (7 × 3): vᵀ = U P, U with orthonormal columns
    U, _ = scipy.linalg.polar(v.T.numpy())
    np.testing.assert_allclose(u.numpy(), U.T, atol=1e-10)


def test_paper_weights_are_applied_in_each_phase() -> None:
    """The logged total is the weighted sum of the logged terms; the default has the two extra terms from
    the first step, the literal reading only after the orthogonal phase (and τ 0.9 then 0.2)."""
    data = planted_pairs(600, seed=0)
    names = ["sparsity", "max_activation", "max_margin", "inactive"]
    for losses in ("paper", "paper_literal"):
        d = EDDP(n_concepts=3, seed=0, max_iter=150, polish_iter=0, n_init=1, losses=losses).fit(data.X)
        p = LOSS_SETS[losses]
        base = [p["sparsity_weight"], p["activation_weight"], p["margin_weight"] * margin_scale(losses, 3),
                p["inactive_weight"]]
        h0, h50 = d.loss_history_[0], d.loss_history_[1]
        assert h0["step"] == 0 and h50["step"] == 50
        assert ("excess_activity" in h0) is (losses == "paper")
        for h in (h0, h50):
            total = sum(w * h[n] for w, n in zip(base, names, strict=True))
            total += h.get("excess_activity", 0.0) + h.get("sparsity_bound", 0.0)
            assert h["loss"] == pytest.approx(total, rel=1e-5)
        assert "excess_activity" in h50
    for losses in ("paper", "paper_literal"):
        p = LOSS_SETS[losses]
        assert (p["sparsity_weight"], p["activation_weight"], p["margin_weight"], p["inactive_weight"]) == (
            0.85, 2.8, 0.6, 15.0)
    assert (LOSS_SETS["paper_literal"]["tau"], LOSS_SETS["paper_literal"]["tau_late"]) == (0.9, 0.2)
    assert margin_scale("paper", 3) == pytest.approx(math.log2(3) / math.log2(500))
    assert margin_scale("paper_literal", 3) == 1.0 and margin_scale("legacy", 3) == 1.0


def test_first_phase_keeps_the_filters_orthonormal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.Tensor] = []
    real = eddp_mod.orthonormalise

    def spy(v: torch.Tensor) -> torch.Tensor:
        out = real(v)
        calls.append(out.detach().clone())
        return out

    monkeypatch.setattr(eddp_mod, "orthonormalise", spy)
    data = planted_pairs(600, seed=0)
    EDDP(n_concepts=3, seed=0, max_iter=30, polish_iter=0, n_init=1).fit(data.X)
    # the initial projection plus one after each of the first max_iter // 10 steps
    assert len(calls) == 1 + 3
    for u in calls:
        torch.testing.assert_close(u @ u.T, torch.eye(3), atol=1e-5, rtol=0)
    calls.clear()
    EDDP(n_concepts=3, seed=0, max_iter=30, polish_iter=0, n_init=1, losses="legacy").fit(data.X)
    assert calls == []


def test_loss_set_validation() -> None:
    X = planted_pairs(200, seed=0).X
    with pytest.raises(ParameterError, match="losses"):
        EDDP(n_concepts=3, losses="ours").fit(X)
    with pytest.raises(ParameterError, match="edit_scale"):
        EDDP(n_concepts=3, edit_scale="logit").fit(X)
    with pytest.raises(ParameterError, match="max_iter must be ≥ 3"):
        EDDP(n_concepts=3, max_iter=2).fit(X)
    with pytest.raises(ParameterError, match="excess_weight"):
        EDDP(n_concepts=3, excess_weight=-1.0).fit(X)
    with pytest.raises(ParameterError, match="tau_late"):
        EDDP(n_concepts=3, tau_late=0.0).fit(X)


# ------------------------------------------------------------------------------------------------
# recovery: the paper's easy setting and a harder one
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def easy() -> tuple[EDDP, object]:
    data = planted_pairs(6000, seed=1)
    return EDDP(n_concepts=3, seed=1).fit(data.X), data


def test_default_recovers_the_papers_planted_setting(easy: tuple[EDDP, object]) -> None:
    d, data = easy
    Y = d.encode(data.X) > 0.5  # type: ignore[attr-defined]
    _, _, iou = match_by_iou(Y, data.present)  # type: ignore[attr-defined]
    assert iou.min() >= 0.9, iou
    assert encoding_cosine(Y, data.present, d.encoding_directions_, data.signals) >= 0.95  # type: ignore[attr-defined]


def test_edit_scale_is_the_papers_by_default_and_decode_keeps_its_scale(easy: tuple[EDDP, object]) -> None:
    d, data = easy
    X = data.X  # type: ignore[attr-defined]
    own = (d.decoding_directions_ * d.encoding_directions_).sum(1)
    torch.testing.assert_close(own, torch.ones(3), atol=1e-5, rtol=1e-5)
    g = EDDP(n_concepts=3, seed=1, edit_scale="gap").fit(X)
    # same detectors (up to the fixture's thread count); the signals differ by the scale only, and decode
    # is the same
    torch.testing.assert_close(g.decoding_directions_, d.decoding_directions_, atol=1e-4, rtol=1e-4)
    own_g = (g.decoding_directions_ * g.encoding_directions_).sum(1)
    torch.testing.assert_close(own_g, d.decode_gain_, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.decode_gain_, torch.ones(3), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.decode(g.encode(X)), d.decode(d.encode(X)), rtol=1e-4, atol=1e-4)


def test_paper_losses_beat_legacy_on_a_wider_correlated_setting() -> None:
    """5 concepts with pairwise signal cosine 0.5 and 5 distractors: the legacy detectors under-fire, the
    paper's set does measurably better (seeded, one thread: a fixed verdict; bench: 0.943 vs 0.909 on seed
    0, 0.951 vs 0.914 on seed 1)."""
    data = planted_pairs(6000, n_concepts=5, n_distractors=5, correlation=0.5, seed=0)
    got = {}
    for losses in ("paper", "legacy"):
        d = EDDP(n_concepts=5, seed=0, losses=losses).fit(data.X)
        got[losses] = decoding_iou(d.encode(data.X) > 0.5, data.present)
    assert got["paper"] >= 0.93 and got["paper"] >= got["legacy"] + 0.02, got
    # the oracle filters are perfect here: the gap to 1 is the method's, not the data's
    assert decoding_iou(data.X @ data.filters.T - data.biases > 0, data.present) == 1.0


def test_paper_literal_collapses_on_the_papers_setting() -> None:
    """Why the default departs from the literal reading: on the paper's own setting it ends with detectors
    that fire on (nearly) every row, no better than claiming everything."""
    data = planted_pairs(6000, seed=0)
    d = EDDP(n_concepts=3, seed=0, losses="paper_literal").fit(data.X)
    Y = d.encode(data.X) > 0.5
    assert decoding_iou(Y, data.present) < 0.6
    assert float(Y.float().mean(0).max()) > 0.9


# ------------------------------------------------------------------------------------------------
# the planted generators
# ------------------------------------------------------------------------------------------------
def test_planted_pairs_knobs_do_what_they_say() -> None:
    data = planted_pairs(20000, correlation=0.6, distractor_ratio=4.0, on_rate=0.3, seed=0)
    S, D = data.signals.double(), data.distractors.double()
    G = S @ S.T
    off = G[~torch.eye(3, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, 0.6), atol=1e-6, rtol=0)
    torch.testing.assert_close(G.diag(), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    # oracle filters: W Sᵀ = I, W Dᵀ = 0, and they recover the presence exactly
    W = data.filters.double()
    torch.testing.assert_close(W @ S.T, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(W @ D.T, torch.zeros(3, 2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert decoding_iou(data.X @ data.filters.T - data.biases > 0, data.present) == 1.0
    # on-rate: independent per concept; the distractor coefficients' variance is r × the signals'
    rate = data.present.double().mean(0)
    assert float((rate - 0.3).abs().max()) < 0.015
    alpha = (data.X.double() - 10) @ W.T
    beta = (data.X.double() - 10 - alpha @ S) @ torch.linalg.pinv(D)
    ratio = beta.var(0).mean() / alpha.var(0).mean()
    assert float(ratio) == pytest.approx(4.0, rel=0.05)
    # the paper's setting: one concept per row, β ~ U(0, 5)
    p = planted_pairs(5000, seed=0)
    assert bool((p.present.sum(1) == 1).all())
    x0 = p.X.double() - 10
    resid = x0 - (x0 @ p.filters.double().T) @ p.signals.double()
    beta0 = resid @ torch.linalg.pinv(p.distractors.double())
    assert 0 <= float(beta0.min()) and float(beta0.max()) <= 5 + 1e-4
    # same seed, same data
    assert torch.equal(planted_pairs(100, on_rate=0.5, seed=3).X, planted_pairs(100, on_rate=0.5, seed=3).X)


def test_planted_pairs_bad_knobs_raise_library_errors() -> None:
    with pytest.raises(ParameterError, match="correlation"):
        planted_pairs(10, correlation=1.0)
    with pytest.raises(ParameterError, match="on_rate"):
        planted_pairs(10, on_rate=0.0)
    with pytest.raises(ParameterError, match="distractor_ratio"):
        planted_pairs(10, distractor_ratio=-1.0)
    with pytest.raises(ParameterError, match="dim"):
        planted_pairs(10, n_concepts=10, n_distractors=10, dim=16)


def test_scores_known_values() -> None:
    present = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)
    # detectors swapped and one row wrong: matching undoes the swap, IoUs 1 and 2/3... averaged
    Y = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 1]], dtype=torch.bool)
    rows, cols, iou = match_by_iou(Y, present)
    assert list(cols[np.argsort(rows)]) == [1, 0]
    assert decoding_iou(Y, present) == pytest.approx((1.0 + 2 / 3) / 2)
    est = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    sig = torch.eye(2)
    assert encoding_cosine(Y, present, est, sig) == pytest.approx(1.0)
    # a third planted concept no detector matches counts as 0
    present3 = torch.cat([present, torch.zeros(4, 1, dtype=torch.bool)], 1)
    assert decoding_iou(Y, present3) == pytest.approx((1.0 + 2 / 3) / 3)


def test_state_saved_before_the_gain_loads_with_its_own_scale() -> None:
    """A file from before issue #20 has gap-scaled signals and no ``decode_gain_``: it decodes and edits as
    it did (gain 1, ``edit_scale="gap"``)."""
    data = planted_pairs(960, seed=0)
    d = EDDP(n_concepts=3, seed=0, max_iter=30, polish_iter=5, n_init=1, edit_scale="gap").fit(data.X)
    old = {k: v for k, v in d.state_tensors().items() if k != "decode_gain_"}
    e = EDDP(**{**d.get_params(), "edit_scale": "unit"})
    e.load_state_tensors(old)
    assert e.edit_scale == "gap"
    torch.testing.assert_close(e.decode(e.encode(data.X)), d.decode(d.encode(data.X)))
    assert set(e.state_tensors()) == set(d.state_tensors())
