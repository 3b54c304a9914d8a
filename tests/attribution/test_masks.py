"""Minimal masks by activation matching, the occlusion / Grad-CAM baselines and the pixel metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import conceptlens as cl
from conceptlens.attribution.baselines import grad_cam, occlusion
from conceptlens.attribution.masks.explainer import (
    MaskExplainer,
    activation_sites,
    background_robustness,
    binarize_at,
    compare_at_equal_area,
    default_layers,
    kept_fraction,
    pixel_deletion_auc,
    pixel_insertion_auc,
    top1_kept,
)
from conceptlens.errors import ConceptLensError, LayerError, NotFittedError, ParameterError, TargetError
from helpers import TinyNet

FAST = dict(steps=30, size=8)


# ----------------------------------------------------------------------------------------- sanity models
class RegionFraction(nn.Module):
    """Two classes; p(class 0) = fraction of non-zero pixels inside a fixed box (the whole image if None)."""

    def __init__(self, box: tuple[int, int, int, int] | None = None) -> None:
        super().__init__()
        self.box = box
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nz = (x.abs().sum(1) > 0).float()
        if self.box is not None:
            r0, r1, c0, c1 = self.box
            nz = nz[:, r0:r1, c0:c1]
        f = nz.mean((1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([f.log(), (1 - f).log()], 1) + 0 * self.dummy


class QuadrantNet(nn.Module):
    """Looks only at the top-left quadrant: logit 0 = mean of that quadrant, logit 1 = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        q = x[:, :, :h, :w].mean((1, 2, 3)) * 4
        return torch.stack([q, torch.zeros_like(q)], 1) + 0 * self.dummy


class ObjectVsNoise(nn.Module):
    """Class 0 = a bright object in the top-left quadrant; class 1 = "high-frequency noise".

    ``logit 0 = 4 · mean_TL ReLU(x − 1)`` (the object is at 1.4–1.6, noise backgrounds rarely exceed 1);
    ``logit 1 = mean |x[..., 1:] − x[..., :-1]| + 0.2`` (horizontal differences: ≈ 1.13 for N(0, 1) noise,
    ≈ 1/3 for U[0, 1) noise, ≈ 0 on the smooth object and the grey background). Keeping a fraction ``q``
    of the quadrant keeps class 0 on the grey background for q ≳ 0.15, but needs q ≳ 0.26 under uniform
    noise and q ≳ 0.58 under Gaussian noise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        obj = 4 * self.act(x[:, :, :h, :w] - 1).mean((1, 2, 3))
        hf = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
        return torch.stack([obj, hf + 0.2], 1)


def object_images(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(n, 3, 16, 16, generator=gen) - 0.5) * 0.1
    x[:, :, :8, :8] = 1.4 + 0.2 * torch.rand(n, 3, 8, 8, generator=gen)
    return x


@pytest.fixture(autouse=True)
def _one_thread(request: pytest.FixtureRequest):
    # tiny tensors: one thread avoids OpenMP spin-waiting on a busy machine (several times faster there)
    n = torch.get_num_threads()
    if request.node.get_closest_marker("slow") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def positive_images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.5


# ----------------------------------------------------------------------------------------- the explainer
def test_masks_are_exactly_binary_and_numbers_consistent(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:6]
    r = MaskExplainer(tiny, **FAST).explain(x)
    assert r.masks.shape == (6, 1, 16, 16)
    assert set(torch.unique(r.masks).tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(r.kept_fraction, r.masks.mean((1, 2, 3)))
    with torch.no_grad():
        y0 = tiny(x).argmax(1)
        p = F.softmax(tiny(r.masks * x), 1)
    assert torch.equal(r.target, y0)
    assert torch.equal(r.same_top1, p.argmax(1) == y0)
    torch.testing.assert_close(r.confidence, p.gather(1, y0[:, None])[:, 0])
    assert torch.equal(top1_kept(tiny, x, r.masks), r.same_top1)
    assert len(r.history) == FAST["steps"]
    assert {"act", "ce", "kl", "area", "bin", "tv", "abductive", "kept", "top1"} <= set(r.history[0])


def test_area_prior_lowers_the_kept_fraction(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    with_area = MaskExplainer(tiny, **FAST, area_mode="penalty").explain(tiny_images)
    without = MaskExplainer(tiny, **FAST, area_mode="penalty", area=0.0).explain(tiny_images)
    assert with_area.kept_fraction.mean() < without.kept_fraction.mean() - 0.2
    assert with_area.same_top1.float().mean() >= 0.9


def test_abductive_term_keeps_the_class_under_noise_backgrounds() -> None:
    # ObjectVsNoise: on grey a small part of the object suffices, under noise most of it is needed. With a
    # bounded area pressure (at most 2 λ_area), selection on the grey background alone and the U-Net alone
    # (detail=0, as the authors; a free logit map makes even the masks without the term robust), only the
    # abductive term can make the masks survive noise backgrounds
    model = ObjectVsNoise().eval()
    x = object_images(8)
    assert bool((model(x).argmax(1) == 0).all())
    kw = dict(size=8, detail=0, steps=60, layers=["act"], area_end=2.0, area_pause=False, select="zero",
              area_mode="penalty", refine=False)  # refine would shrink past the noise with select="zero"
    with_abd = MaskExplainer(model, **kw).explain(x)
    without = MaskExplainer(model, **kw, abductive=0.0).explain(x)
    assert bool(with_abd.same_top1.all()) and bool(without.same_top1.all())
    rob_with = background_robustness(model, x, with_abd.masks, draws=8, seed=3)
    rob_without = background_robustness(model, x, without.masks, draws=8, seed=3)
    for kind in ("gaussian", "uniform"):
        assert float(rob_with[kind].mean()) >= 0.9
        assert float(rob_with[kind].mean()) > float(rob_without[kind].mean()) + 0.1
    assert with_abd.kept_fraction.mean() > without.kept_fraction.mean()


def test_select_all_checks_the_noise_backgrounds() -> None:
    model = ObjectVsNoise().eval()
    x = object_images(8)
    kw = dict(size=8, steps=60, layers=["act"], abductive=0.0, area_mode="penalty")
    zero = MaskExplainer(model, **kw, select="zero").explain(x)
    every = MaskExplainer(model, **kw, select="all").explain(x)
    # same trajectory, stricter choice: never a smaller mask, and more robust to noise
    assert bool((every.kept_fraction >= zero.kept_fraction).all())
    rz = background_robustness(model, x, zero.masks, draws=8, seed=3)
    ra = background_robustness(model, x, every.masks, draws=8, seed=3)
    assert float(ra["gaussian"].mean()) > float(rz["gaussian"].mean())


def test_a_fixed_budget_keeps_exactly_that_many_pixels(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    # budget held at 25 %: every visited binary mask is the top 64 of the 256 pixels, so is the result
    x = tiny_images[:6]
    kw = dict(FAST, area_mode="budget", budget_start=0.25, budget_min=0.25, budget_rate=0.0, budget_grow=0.0,
              refine=False)
    r = MaskExplainer(tiny, **kw).explain(x)
    assert torch.equal(r.masks.sum((1, 2, 3)), torch.full((6,), 64.0))
    assert all("area" in h and h["area"] == 0.0 and h["budget"] == 0.25 for h in r.history)


def test_the_budget_shrinks_while_the_class_holds_and_grows_when_lost(
    tiny: TinyNet, tiny_images: torch.Tensor
) -> None:
    x = tiny_images[2:3]  # an image whose class is lost at small budgets: both directions are exercised
    kw = dict(FAST, steps=40, area_mode="budget", budget_rate=0.3, budget_grow=0.1, budget_min=0.01)
    r = MaskExplainer(tiny, **kw).explain(x)
    b = [1.0] + [h["budget"] for h in r.history]
    for prev, nxt, h in zip(b, b[1:], r.history, strict=False):
        expect = max(prev * 0.7, 0.01) if h["top1"] == 1.0 else min(prev * 1.1, 1.0)
        assert nxt == pytest.approx(expect, rel=1e-5)
    lost = sum(h["top1"] == 0.0 for h in r.history)
    assert 0 < lost < len(r.history)
    # the returned mask is the smallest class-keeping one visited
    assert bool(r.same_top1.all()) and float(r.kept_fraction[0]) <= min(
        h["kept"] for h in r.history if h["top1"] == 1.0) + 1e-6


def test_both_paths_return_the_smaller_class_keeping_mask(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:6]
    runs = {m: MaskExplainer(tiny, **FAST, area_mode=m).explain(x) for m in ("budget", "penalty", "both")}
    b, p, both = runs["budget"], runs["penalty"], runs["both"]
    # each path of "both" replays its single-path run (own U-Nets, same seeded start, same noise draws)
    inf = torch.tensor(math.inf)
    kb = torch.where(b.same_top1, b.kept_fraction, inf)
    kp = torch.where(p.same_top1, p.kept_fraction, inf)
    assert torch.allclose(torch.where(both.same_top1, both.kept_fraction, inf), torch.minimum(kb, kp),
                          atol=0.02)
    assert bool((both.same_top1 >= (b.same_top1 | p.same_top1)).all())
    assert both.masks.shape == b.masks.shape and both.step.shape == (6,)


def test_refine_shrinks_masks_along_their_ranking_and_keeps_the_class(tiny: TinyNet,
                                                                     tiny_images: torch.Tensor) -> None:
    x = tiny_images[:6]
    kw = dict(FAST, area_mode="budget", budget_start=0.5, budget_min=0.5, budget_rate=0.0, budget_grow=0.0)
    raw = MaskExplainer(tiny, **kw, refine=False).explain(x)
    ref = MaskExplainer(tiny, **kw).explain(x)
    assert torch.equal(ref.same_top1, raw.same_top1)
    assert bool((ref.masks <= raw.masks).all())  # a subset of the optimised mask's pixels
    # candidates are 0.9^j of the 128 kept pixels: every refined area is one of them
    sizes = {128} | {math.ceil(128 * 0.9 ** j) for j in range(1, 9)}
    assert set(ref.masks.sum((1, 2, 3)).int().tolist()) <= sizes
    assert float(ref.kept_fraction[raw.same_top1].mean()) < float(raw.kept_fraction[raw.same_top1].mean())


def test_restarts_never_give_a_larger_mask(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:6]
    one = MaskExplainer(tiny, **FAST, area_mode="budget").explain(x)
    two = MaskExplainer(tiny, **FAST, area_mode="budget", restarts=2).explain(x)
    # the first restart replays the single run; the second can only offer a smaller class-keeping mask
    assert bool((two.same_top1 >= one.same_top1).all())
    kept = one.same_top1
    assert bool((two.kept_fraction[kept] <= one.kept_fraction[kept] + 1e-6).all())


def test_same_seed_same_masks_other_seed_other_masks(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:4]
    a = MaskExplainer(tiny, seed=3, **FAST).explain(x)
    b = MaskExplainer(tiny, seed=3, **FAST).explain(x)
    c = MaskExplainer(tiny, seed=4, **FAST).explain(x)
    assert torch.equal(a.masks, b.masks) and a.history == b.history
    assert not torch.equal(a.masks, c.masks)


def test_an_image_does_not_depend_on_its_batch(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    # every image has its own U-Net with the same seeded start, and every batch replays the same noise draws
    both = MaskExplainer(tiny, **FAST).explain(tiny_images[:5])
    alone = MaskExplainer(tiny, **FAST).explain(tiny_images[1:2])
    split = MaskExplainer(tiny, **FAST, batch_size=2).explain(tiny_images[:5])
    assert (both.masks[1] != alone.masks[0]).float().mean() < 0.02
    assert (both.masks != split.masks).float().mean() < 0.02
    assert len(split.history) == FAST["steps"] and split.step.shape == (5,)


def test_explicit_target_and_errors(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:2]
    r = MaskExplainer(tiny, **dict(FAST, steps=5)).explain(x, target="class 2")
    assert r.target.tolist() == [2, 2]
    with pytest.raises(TargetError, match="out of range"):
        MaskExplainer(tiny, steps=2).explain(x, target=9)
    with pytest.raises(TargetError, match="did you mean"):
        MaskExplainer(tiny, steps=2).explain(x, target="clas 1")
    with pytest.raises(TargetError, match="2 images"):
        MaskExplainer(tiny, steps=2).explain(x, target=[0, 1, 2])
    with pytest.raises(ParameterError, match="valid names"):
        MaskExplainer(tiny, aera=5.0)
    with pytest.raises(ParameterError, match="steps"):
        MaskExplainer(tiny, steps=0)
    with pytest.raises(ParameterError, match="detail"):
        MaskExplainer(tiny, detail=1)
    with pytest.raises(ParameterError, match="'budget', 'penalty' or 'both'"):
        MaskExplainer(tiny, area_mode="budgets")
    with pytest.raises(ParameterError, match="budget_min"):
        MaskExplainer(tiny, budget_start=0.1, budget_min=0.2)
    with pytest.raises(ParameterError, match="budget_grow"):
        MaskExplainer(tiny, budget_grow=1.5)
    with pytest.raises(ParameterError, match="restarts"):
        MaskExplainer(tiny, restarts=0)
    with pytest.raises(LayerError, match="nearest"):
        MaskExplainer(tiny, layers=["featurs.1"], steps=2).explain(x)
    with pytest.raises(ConceptLensError, match=r"\[N,3,H,W\]"):
        MaskExplainer(tiny, steps=2).explain(x[0])
    with pytest.raises(NotFittedError, match="fit_amortised"):
        MaskExplainer(tiny, steps=2).explain(x, amortised=True)


def test_automatic_layers_are_the_last_activation_of_each_resolution(tiny: TinyNet) -> None:
    sites = activation_sites(tiny, torch.zeros(1, 3, 16, 16))
    layers = default_layers(sites)
    assert list(layers) == ["features.1", "features.3"]
    assert layers["features.3"] > layers["features.1"] and sum(layers.values()) == pytest.approx(1.0)


def test_automatic_layers_on_resnet18_are_the_stage_outputs() -> None:
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=10).eval()  # random weights: only the structure matters
    layers = default_layers(activation_sites(model, torch.zeros(1, 3, 64, 64)))
    stages = ["relu", "layer1.1.relu@1", "layer2.1.relu@1", "layer3.1.relu@1", "layer4.1.relu@1"]
    assert list(layers) == stages
    # the authors' weights 1, 2, 2, 4, 8 (normalised)
    assert [round(v * 17, 6) for v in layers.values()] == [1, 2, 2, 4, 8]
    # a multi-call module needs its call index
    ex = MaskExplainer(model, layers=["layer1.1.relu"], steps=1, size=4)
    with pytest.raises(LayerError, match="runs 2 times"):
        ex.explain(torch.zeros(1, 3, 64, 64))


def test_amortised_mode_gives_one_pass_binary_masks(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    ex = MaskExplainer(tiny, **FAST).fit_amortised(tiny_images[:8], steps=20, batch_size=4)
    r = ex.explain(tiny_images[8:], amortised=True)
    assert r.masks.shape == (4, 1, 16, 16)
    assert set(torch.unique(r.masks).tolist()) <= {0.0, 1.0}
    assert torch.equal(ex.masks_amortised(tiny_images[8:]), r.masks)
    assert len(ex.history_amortised_) == 20
    with pytest.raises(ParameterError, match="top-1"):
        wrong = (r.target + 1) % 4
        ex.explain(tiny_images[8:], target=wrong, amortised=True)


# ----------------------------------------------------------------------------------------- baselines
def test_occlusion_highlights_the_only_quadrant_the_model_sees(positive_images: torch.Tensor) -> None:
    sal = occlusion(QuadrantNet(), positive_images, target=0, patch=4, stride=4)
    assert sal.shape == (3, 1, 16, 16)
    assert bool((sal[:, :, :8, :8] > 0).all())
    assert bool((sal[:, :, 8:, :] == 0).all()) and bool((sal[:, :, :, 8:] == 0).all())
    # overlapping squares: outside pixels covered only by squares that miss the quadrant stay exactly 0
    sal2 = occlusion(QuadrantNet(), positive_images, target=0, patch=4, stride=2, batch_size=7)
    assert bool((sal2[:, :, 10:, :] == 0).all()) and bool((sal2[:, :, :6, :6] > 0).all())


def test_grad_cam_of_a_gap_linear_model_is_the_cam(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:5]
    target = torch.tensor([0, 1, 2, 3, 1])
    got = grad_cam(tiny, x, target, layer="features", batch_size=2)
    with torch.no_grad():
        A = tiny.features(x)  # [N,C,h,w]
        w = tiny.fc.weight[target]  # [N,C]
        cam = F.relu(torch.einsum("nchw,nc->nhw", A, w))[:, None]
        cam = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)
        peak = cam.amax((1, 2, 3), keepdim=True)
        cam = torch.where(peak > 0, cam / peak, cam)
    torch.testing.assert_close(got, cam, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in tiny.parameters())


# ----------------------------------------------------------------------------------------- metrics
def test_deletion_and_insertion_on_a_model_that_counts_salient_pixels(positive_images: torch.Tensor) -> None:
    model = RegionFraction(box=(4, 6, 10, 12))  # 4 of 256 pixels decide
    good = torch.zeros(3, 1, 16, 16)
    good[:, :, 4:6, 10:12] = 1
    dele = pixel_deletion_auc(model, positive_images, good, 0, steps=32)
    ins = pixel_insertion_auc(model, positive_images, good, 0, steps=32)
    assert bool((dele < 0.02).all()) and bool((ins > 0.98).all())
    # the reverse order is the worst possible
    assert bool((pixel_deletion_auc(model, positive_images, -good, 0, steps=32) > 0.98).all())
    assert bool((pixel_insertion_auc(model, positive_images, -good, 0, steps=32) < 0.02).all())


def test_deletion_and_insertion_of_a_linear_model_are_one_half(positive_images: torch.Tensor) -> None:
    # p = fraction of non-zero pixels: the curves are straight lines whatever the order, AUC = 1/2 exactly
    sal = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    model = RegionFraction()
    dele, curve = pixel_deletion_auc(model, positive_images, sal, 0, steps=32, return_curve=True)
    torch.testing.assert_close(curve[0], torch.linspace(1, 0, 33), atol=1e-5, rtol=0)
    torch.testing.assert_close(dele, torch.full((3,), 0.5), atol=1e-5, rtol=0)
    ins = pixel_insertion_auc(model, positive_images, sal, 0, steps=32)
    torch.testing.assert_close(ins, torch.full((3,), 0.5), atol=1e-5, rtol=0)


def test_binarize_at_keeps_exactly_the_requested_pixels() -> None:
    sal = torch.rand(4, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    b = binarize_at(sal, torch.tensor([0.0, 0.1, 0.25, 1.0]))
    assert b.sum((1, 2, 3)).tolist() == [0, 10, 25, 100]
    thr = sal.reshape(4, -1).sort(1, descending=True).values[1, 9]
    assert torch.equal(b[1, 0] > 0, sal[1, 0] >= thr)
    with pytest.raises(ParameterError):
        binarize_at(sal, 1.5)


def test_compare_at_equal_area_uses_one_area_everywhere(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:4]
    masks = torch.zeros(4, 1, 16, 16)
    masks[:, :, 2:10, 3:9] = 1
    occ = occlusion(tiny, x, patch=4, stride=2)
    rows = compare_at_equal_area(tiny, x, None, masks, {"occlusion": occ}, steps=8)
    assert [r["method"] for r in rows] == ["mask", "occlusion", "random"]
    for r in rows:
        assert r["kept_fraction"] == pytest.approx(48 / 256)
        assert 0 <= r["top1_kept"] <= 1 and 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
    # occlusion's own top pixels are the most damaging ones to delete: no worse than random
    by = {r["method"]: r for r in rows}
    assert by["occlusion"]["deletion_auc"] <= by["random"]["deletion_auc"] + 1e-6
    assert kept_fraction(masks).tolist() == [48 / 256] * 4


# ----------------------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_real_model_masks_are_small_and_keep_the_class(lite0: nn.Module) -> None:
    x = cl.data.sample_images(lite0.preset)[1:2]  # espresso, a confident prediction
    ex = MaskExplainer(lite0, steps=60)
    r = ex.explain(x)
    assert list(ex.layers_ or {}) == ["_blocks.1._swish@0", "_blocks.3._swish@0", "_blocks.5._swish@0",
                                      "_blocks.11._swish@0", "_swish@1"]
    assert set(torch.unique(r.masks).tolist()) <= {0.0, 1.0}
    assert bool(r.same_top1.all())
    assert float(r.kept_fraction.max()) <= 0.10  # measured 6.5 % (12.5 % at 40 steps; 100 by default: 3.8 %)
    # the mask keeps more confidence than random pixels cut at the same area
    rows = compare_at_equal_area(lite0, x, r.target, r.masks, {}, steps=4)
    by = {row["method"]: row for row in rows}
    assert by["mask"]["confidence"] > by["random"]["confidence"]


# ----------------------------------------------------------------------------------------- comparison, report
def test_compare_with_baselines_rows_times_and_per_image(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    from conceptlens.attribution.masks.explainer import compare_with_baselines

    x = tiny_images[:3]
    res = compare_with_baselines(tiny, x, explainer=MaskExplainer(tiny, **FAST), auc_steps=4,
                                 occlusion_params={"patch": 4, "stride": 4})
    assert [r["method"] for r in res.rows] == ["mask", "occlusion", "grad_cam", "random"]
    assert set(res.seconds) == {"mask", "mask_training", "occlusion", "grad_cam"}
    assert all(v >= 0 for v in res.seconds.values()) and res.seconds["mask_training"] == 0
    # every baseline is cut at the mask's own area, image by image
    kept = res.explanation.kept_fraction.tolist()
    for r in res.rows:
        assert r["kept_fraction_per_image"] == pytest.approx(kept, abs=1 / 256)
    rows = res.per_image(["a", "b", "c"], tiny.preset.classes)
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["target_name"] == f"class {rows[1]['target']}"
    assert rows[0]["top1_kept"] == int(res.explanation.same_top1[0])
    assert rows[2]["occlusion_confidence"] == pytest.approx(res.rows[1]["confidence_per_image"][2])
    with pytest.raises(ParameterError, match="unknown baseline"):
        compare_with_baselines(tiny, x, baselines=("lime",))
    with pytest.raises(ParameterError, match="names"):
        res.per_image(["only one"])
    am = compare_with_baselines(tiny, x, explainer=MaskExplainer(tiny, **FAST), amortised=True,
                                amortised_steps=3, baselines=(), auc_steps=2)
    assert am.amortised and am.seconds["mask_training"] > 0 and [r["method"] for r in am.rows] == ["mask",
                                                                                                   "random"]


def test_key_concept_scores_known_values() -> None:
    from conceptlens.attribution.masks.explainer import key_concept_scores

    m = torch.zeros(3, 1, 4, 4)
    t = torch.zeros(3, 4, 4, dtype=torch.bool)
    m[0, 0, :2, :2] = 1  # 4 kept, truth = the same 4 pixels
    t[0, :2, :2] = True
    m[1, 0, :2, :] = 1  # 8 kept, 4 of them on a 4-pixel truth
    t[1, :2, :2] = True
    t[2, 0, 0] = True  # empty mask
    s = key_concept_scores(m, t)
    torch.testing.assert_close(s["iou"], torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(s["precision"], torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    with pytest.raises(ParameterError, match="shape"):
        key_concept_scores(m, t[:, :2])


def test_mask_overlay_keeps_the_kept_pixels_and_dims_the_rest() -> None:
    from conceptlens.report.sections.masks import mask_overlay

    pic = torch.rand(12, 12, 3, generator=torch.Generator().manual_seed(0)).numpy()
    m = torch.zeros(12, 12)
    m[3:9, 3:9] = 1
    out = mask_overlay(pic, m, dim=0.25)
    assert out.shape == (12, 12, 3) and out.dtype.name == "float32"
    # inside (away from the outline) untouched, far outside dimmed, the outline yellow
    assert (out[5:7, 5:7] == pic[5:7, 5:7]).all()
    assert abs(out[0:1, 0:1] - 0.25 * pic[0:1, 0:1]).max() < 1e-6
    assert tuple((out[3, 5] * 255).round()) == (255.0, 212.0, 0.0)
    assert tuple((out[2, 5] * 255).round()) == (255.0, 212.0, 0.0)
    with pytest.raises(ParameterError):
        mask_overlay(pic, m[:5])


def test_mask_section_renders(tiny: TinyNet, tiny_images: torch.Tensor, tmp_path) -> None:
    from conceptlens.attribution.masks.explainer import compare_with_baselines
    from conceptlens.report import Section
    from conceptlens.report.sections.masks import mask_section, write_page

    x = tiny_images[:3]
    res = compare_with_baselines(tiny, x, explainer=MaskExplainer(tiny, **FAST), auc_steps=4,
                                 occlusion_params={"patch": 4, "stride": 4})
    names = ["<cat>", "dog", "bird"]
    s = mask_section(res.explanation, x, names=names, baselines=res.saliencies, model=tiny,
                     comparison=res.rows, max_images=2)
    assert isinstance(s, Section) and s.title == "Minimal masks"
    assert sorted(s.images) == ["masks_000.png", "masks_001.png"]
    strip = s.images["masks_000.png"]
    assert strip.shape == (16, 4 * 16 + 3 * 6, 3)  # photo, mask, occlusion, Grad-CAM
    assert "&lt;cat&gt;" in s.html and "<cat>" not in s.html  # user text escaped
    assert s.html.count("<figure") == 2 and "1 more images not shown" in s.html
    conf = f"{res.rows[1]['confidence_per_image'][0]:.3f}"
    assert conf in s.html  # occlusion's number for the first image
    # without comparison rows: the top-1 / confidence of the binarised baselines are computed with the model
    s2 = mask_section(res.explanation, x, baselines={"occlusion": res.saliencies["occlusion"]}, model=tiny)
    assert s2.html.count("<tr><th>occlusion</th>") == 3
    # the report's writer takes it, and so does the small page
    page = write_page([s], tmp_path / "page")
    html = page.read_text()
    assert "Minimal masks" in html and "img/masks_000.png" in html and "<script" not in html
    assert (tmp_path / "page" / "img" / "masks_001.png").is_file()
    with pytest.raises(ParameterError, match="MaskExplanation"):
        mask_section(object(), x)
    with pytest.raises(ParameterError, match="names"):
        mask_section(res.explanation, x, names=["a"])


@pytest.mark.slow
def test_bench_masks_quick_writes_valid_json(tmp_path) -> None:
    import json

    from conceptlens import bench

    bench.run("masks", quick=True, out=tmp_path)
    payload = json.loads((tmp_path / "masks.json").read_text())
    assert payload["benchmark"] == "masks" and payload["config"]["quick"] is True
    methods = [r["method"] for r in payload["rows"]]
    assert methods == ["mask (per image)", "occlusion @ equal area", "grad_cam @ equal area",
                       "random @ equal area"]
    for r in payload["rows"] + payload["amortised_rows"]:
        for k in ("kept_fraction", "top1_kept", "confidence", "deletion_auc", "insertion_auc"):
            assert 0 <= r[k] <= 1
    assert payload["rows"][0]["ratio_to_occlusion"] > 0
    assert len(payload["per_image"]) == 2 and set(payload["targets"]) >= {"per_image_seconds_le_30"}
    w = payload["world"]
    assert [r["method"] for r in w["rows"]][0] == "mask" and all(0 <= r["iou_key"] <= 1 for r in w["rows"])
    assert (tmp_path / "masks.md").read_text().startswith("### Minimal masks")


def test_detail_map_upsamples_the_unet_logits_and_adds_a_per_image_map() -> None:
    from conceptlens.attribution.masks.explainer import _GroupedUNet

    x = torch.randn(3, 3, 32, 32)
    plain = _GroupedUNet(4, 4, 3, 1.0, 0)
    fine = _GroupedUNet(4, 4, 3, 1.0, 0, free=True, detail=16)
    assert fine.free is not None and fine.free.shape == (3, 1, 16, 16)
    z4 = plain(x)
    assert z4.shape == (3, 1, 4, 4)
    # with the map at zero (its start), the fine logits are the U-Net's logits upsampled
    expected = F.interpolate(z4, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fine(x), expected)
    with torch.no_grad():
        fine.free[1, 0, 3, 5] = 7.0  # one cell of image 1's map moves that cell only
    z = fine(x)
    diff = (z - expected).abs() > 1e-6
    assert diff.sum() == 1 and bool(diff[1, 0, 3, 5])
    # a detail below the U-Net's size is raised to it
    assert _GroupedUNet(4, 4, 1, 1.0, 0, free=True, detail=2)(x[:1]).shape == (1, 1, 4, 4)


def test_detail_zero_is_the_unet_alone_and_default_detail_is_half_the_side(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 16, 16)
    assert MaskExplainer(tiny)._detail(x) == 8 and MaskExplainer(tiny, detail=5)._detail(x) == 5
    r0 = MaskExplainer(tiny, steps=3, size=4, detail=0, area_mode="penalty").explain(x)
    r4 = MaskExplainer(tiny, steps=3, size=4, detail=4, area_mode="penalty").explain(x)
    # detail=0 and detail=size start from the same masks; only the latter can move single cells, and
    # with the map at its start (zero) the first step's masks agree
    assert r0.history[0]["kept"] == pytest.approx(r4.history[0]["kept"])
    assert MaskExplainer(tiny, detail=0).get_params()["detail"] == 0


def test_model_outputs_are_read_as_logits_or_rejected_with_a_parameter_error() -> None:
    from conceptlens.attribution.masks.explainer import _logits

    t = torch.zeros(2, 3)
    assert _logits(t) is t and _logits((t, None)) is t and _logits({"logits": t}) is t
    with pytest.raises(ParameterError, match="logits tensor"):
        _logits("not logits")
