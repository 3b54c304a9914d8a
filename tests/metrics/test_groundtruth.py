"""Tests of the ground-truth scores: localisation, matching and ranking on hand-made cases, and the
reference maps (oracle, layer oracle, random) on samples of the concept world."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from scipy.stats import spearmanr

from conceptlens.errors import ConceptLensError
from conceptlens.metrics import groundtruth as gt
from conceptlens.world.concepts import ConceptWorld


def _rect(H: int, W: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(H, W, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


# ------------------------------------------------------------------------------------------ localisation
def test_known_iou_and_best_threshold() -> None:
    H = W = 8
    # map: 1.0 on R1 (rows 0-1, cols 0-3; 8 px), 0.5 on R2 (rows 2-3, cols 0-3; 8 px), 0 elsewhere
    m = torch.zeros(H, W)
    m[0:2, 0:4] = 1.0
    m[2:4, 0:4] = 0.5
    r1 = _rect(H, W, 0, 2, 0, 4)
    both = _rect(H, W, 0, 4, 0, 4)
    shifted = _rect(H, W, 0, 2, 2, 6)  # overlaps R1 on 4 px: IoU with R1 = 4 / 12, with R1∪R2 = 4 / 20
    masks = torch.stack([r1, both, shifted])[None]  # [1, 3, H, W]
    loc = gt.localisation_scores(m[None, None], masks)
    assert loc.iou[0].tolist() == pytest.approx([1.0, 1.0, 1 / 3])
    # map > t selects R1∪R2 for t < 0.5 and R1 alone for t >= 0.5 (strict inequality on the normalised map)
    assert loc.threshold[0].tolist() == pytest.approx([0.5, 0.1, 0.5])
    # the maximal pixels are R1 (8 px): all inside r1 and `both`, half inside `shifted`
    assert loc.pointing[0].tolist() == pytest.approx([1.0, 1.0, 0.5])


def test_iou_averages_over_present_images_only_and_scale_free() -> None:
    H = W = 8
    a = _rect(H, W, 0, 4, 0, 4)  # 16 px
    b = _rect(H, W, 0, 4, 2, 6)  # 16 px, 8 shared with a: IoU 1/3
    maps = torch.stack([a.float() * 3.0, a.float() * 0.01, a.float()])[:, None]  # scale of each image differs
    masks = torch.stack([a, b, torch.zeros(H, W, dtype=torch.bool)])[:, None]  # absent in image 2
    loc = gt.localisation_scores(maps, masks)
    assert float(loc.iou[0, 0]) == pytest.approx((1.0 + 1 / 3) / 2)
    assert int(loc.n_present[0]) == 2
    assert float(loc.pointing[0, 0]) == pytest.approx((1.0 + 0.5) / 2)


def test_zero_or_negative_map_selects_nothing() -> None:
    H = W = 8
    mask = _rect(H, W, 2, 5, 2, 5)[None, None]
    for value in (0.0, -1.0):
        loc = gt.localisation_scores(torch.full((1, 1, H, W), value), mask)
        assert float(loc.iou[0, 0]) == 0.0
        assert float(loc.pointing[0, 0]) == 0.0


def test_batching_does_not_change_scores() -> None:
    world = ConceptWorld(seed=0)
    _, _, masks, _ = world.sample(20, seed=3)
    maps = gt.random_maps(20, 6, (8, 8), (64, 64), seed=1)
    a = gt.localisation_scores(maps, masks, batch_size=3)
    b = gt.localisation_scores(maps, masks, batch_size=64)
    assert torch.allclose(a.iou, b.iou, atol=1e-12) and torch.allclose(a.pointing, b.pointing, atol=1e-12)


def test_bad_inputs_raise_conceptlens_errors() -> None:
    with pytest.raises(ConceptLensError, match="maps"):
        gt.localisation_scores(torch.zeros(2, 3, 4), torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ConceptLensError, match="masks"):
        gt.localisation_scores(torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ConceptLensError, match="thresholds"):
        gt.localisation_scores(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.bool), (0.0, 0.5))


# ------------------------------------------------------------------------------------------ matching
def test_matching_equals_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    for k, K in ((4, 4), (5, 3), (3, 5)):
        score = torch.rand(k, K, generator=gen, dtype=torch.float64)
        match = gt.match_concepts(score)
        total = sum(float(score[match[i], i]) for i in range(K) if match[i] >= 0)
        best = max(
            sum(float(score[r, c]) for r, c in zip(rows, cols, strict=False))
            for rows in itertools.permutations(range(k), min(k, K))
            for cols in itertools.combinations(range(K), min(k, K))
        )
        assert total == pytest.approx(best)
        used = [int(j) for j in match if j >= 0]
        assert len(used) == len(set(used)) == min(k, K)


def test_matching_skips_invalid_concepts() -> None:
    score = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.95]])
    match = gt.match_concepts(score, torch.tensor([True, True, False]))
    assert match.tolist() == [0, 1, -1]


# ------------------------------------------------------------------------------------------ importance
def test_recall_at_2_on_known_rankings() -> None:
    v = torch.tensor([0.9, 0.1, 0.8, 0.2])
    assert gt.recall_at(v, torch.tensor([0, 2])) == 1.0
    assert gt.recall_at(v, torch.tensor([0, 1])) == 0.5
    assert gt.recall_at(v, torch.tensor([1, 3])) == 0.0
    # an unmatched (NaN) concept is never ranked, even as a key
    assert gt.recall_at(torch.tensor([math.nan, 0.5, 0.4, 0.1]), torch.tensor([0, 1])) == 0.5


def test_rank_correlation_matches_scipy() -> None:
    gen = torch.Generator().manual_seed(1)
    rel = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    for _ in range(5):
        v = torch.randn(6, generator=gen, dtype=torch.float64)
        assert gt.rank_correlation(v, rel) == pytest.approx(spearmanr(v.numpy(), rel.numpy())[0])
    v = torch.tensor([3.0, math.nan, 2.0, 1.0, 0.5, math.nan])
    assert gt.rank_correlation(v, rel) == pytest.approx(spearmanr([3, 2, 1, 0.5], [1, 1, 0, 0])[0])
    assert math.isnan(gt.rank_correlation(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 0.0])))


# ------------------------------------------------------------------------------------------ references
@pytest.fixture(scope="module")
def world_sample() -> tuple[ConceptWorld, torch.Tensor, torch.Tensor]:
    world = ConceptWorld(seed=0)
    _, y, masks, _ = world.sample(48, seed=5)
    return world, y, masks


def test_oracle_scores_one(world_sample: tuple[ConceptWorld, torch.Tensor, torch.Tensor]) -> None:
    world, y, masks = world_sample
    c = int(y[0])
    sel = masks[y == c]
    r = gt.score_class(gt.oracle_maps(sel), sel, world.relevance[c].clone(), world.relevance[c])
    for key in ("iou", "iou_key", "pointing", "pointing_key", "recall_at_2", "spearman"):
        assert r[key] == pytest.approx(1.0), key
    # importance in the reverse order fails both importance scores
    r = gt.score_class(gt.oracle_maps(sel), sel, -world.relevance[c], world.relevance[c])
    assert r["recall_at_2"] == 0.0 and r["spearman"] == pytest.approx(-1.0)


def test_random_maps_score_near_chance(world_sample: tuple[ConceptWorld, torch.Tensor, torch.Tensor]) -> None:
    _, _, masks = world_sample
    pres = masks.flatten(2).any(-1)
    area = masks.flatten(2).float().mean(-1)[pres].mean()  # chance of a uniformly placed point
    loc = gt.localisation_scores(gt.random_maps(48, 8, (8, 8), (64, 64), seed=0), masks)
    match = gt.match_concepts(loc.iou)
    iou = torch.stack([loc.iou[match[i], i] for i in range(8)])
    pt = torch.stack([loc.pointing[match[i], i] for i in range(8)])
    oracle = gt.localisation_scores(gt.oracle_maps(masks), masks)
    assert float(oracle.iou.diagonal().min()) == pytest.approx(1.0)
    assert float(iou.mean()) < 0.2  # even after choosing the best threshold and the best matching
    assert abs(float(pt.mean()) - float(area)) < 0.06


def test_layer_oracle_is_between(world_sample: tuple[ConceptWorld, torch.Tensor, torch.Tensor]) -> None:
    _, _, masks = world_sample
    loc = gt.localisation_scores(gt.layer_oracle_maps(masks, (8, 8)), masks)
    d = loc.iou.diagonal()
    assert bool((d < 1.0).all()) and float(d.mean()) > 0.4


def test_scores_are_deterministic(world_sample: tuple[ConceptWorld, torch.Tensor, torch.Tensor]) -> None:
    world, y, masks = world_sample
    c = int(y[0])
    sel = masks[y == c]
    a = gt.score_class(gt.random_maps(sel.shape[0], 5, (8, 8), (64, 64), seed=2), sel,
                       torch.randn(5, generator=torch.Generator().manual_seed(0)), world.relevance[c])
    b = gt.score_class(gt.random_maps(sel.shape[0], 5, (8, 8), (64, 64), seed=2), sel,
                       torch.randn(5, generator=torch.Generator().manual_seed(0)), world.relevance[c])
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
