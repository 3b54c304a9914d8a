"""Minimal masks against saliency baselines at equal area, and the report section that shows them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conceptlens.attribution.baselines import occlusion
from conceptlens.attribution.masks import MaskExplainer
from conceptlens.attribution.masks.losses import independent_backgrounds
from conceptlens.errors import ParameterError
from conceptlens.metrics.pixels import binarize_at, kept_fraction
from conceptlens.workflows.masks import compare_at_equal_area
from helpers import TinyNet

FAST = dict(steps=30, size=8)
pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


# ----------------------------------------------------------------------------------------- comparison, report
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


def test_every_method_is_judged_on_its_complement_and_on_new_noise(tiny: TinyNet,
                                                                   tiny_images: torch.Tensor) -> None:
    # necessity and independent backgrounds, for the masks and every baseline at equal area, against a
    # direct evaluation of the model on each method's own binary mask
    x = tiny_images[:4]
    masks = torch.zeros(4, 1, 16, 16)
    masks[:, :, 2:10, 3:9] = 1
    occ = occlusion(tiny, x, patch=4, stride=2)
    rows = compare_at_equal_area(tiny, x, None, masks, {"occlusion": occ}, steps=4, seed=3)
    with torch.no_grad():
        y = tiny(x).argmax(1)
    r = independent_backgrounds(x, 3)
    binaries = {"mask": masks, "occlusion": binarize_at(occ, kept_fraction(masks), seed=3)}
    for row in rows[:2]:
        b = binaries[row["method"]]
        with torch.no_grad():
            pc = F.softmax(tiny((1 - b) * x), 1)
            noisy = [(tiny(b * x + (1 - b) * rr).argmax(1) == y).float() for rr in r]
        assert row["complement_top1_per_image"] == (pc.argmax(1) == y).float().tolist()
        conf = pc.gather(1, y[:, None])[:, 0].tolist()
        assert row["complement_confidence_per_image"] == pytest.approx(conf)
        assert row["independent_top1_per_image"] == ((noisy[0] + noisy[1]) / 2).tolist()
        assert row["complement_top1"] == pytest.approx(float((pc.argmax(1) == y).float().mean()))
    # a mask that keeps everything: its complement is the grey image, which the model sees as one class
    full = compare_at_equal_area(tiny, x, None, torch.ones(4, 1, 16, 16), {}, steps=2, random_baseline=False)
    with torch.no_grad():
        grey = tiny(torch.zeros(1, 3, 16, 16)).argmax(1)
    assert full[0]["top1_kept"] == 1.0 and full[0]["independent_top1"] == 1.0
    assert full[0]["complement_top1_per_image"] == (y == grey).float().tolist()


def test_compare_with_baselines_rows_times_and_per_image(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    from conceptlens.workflows.masks import compare_with_baselines

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
    from conceptlens.workflows.masks import key_concept_scores

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
    from conceptlens.report import Section
    from conceptlens.report.sections.masks import write_page
    from conceptlens.workflows.masks import compare_with_baselines
    from conceptlens.workflows.masks import measured_mask_section as mask_section

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
