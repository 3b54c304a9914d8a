"""Tests of CRAFT: crop-fitted bank, Sobol importance through the explainer, concept tree, CLI and report."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import conceptlens as cl
import conceptlens.io as data
from conceptlens import decompose
from conceptlens.decompose.craft import CRAFT
from conceptlens.decompose.nmf import NMF
from conceptlens.errors import LayerError, ParameterError
from conceptlens.io.crops import CropSet, crop_activations, crop_images, crop_rows
from conceptlens.recursive import ConceptNode, ambiguity, build_tree, select_ambiguous


# ------------------------------------------------------------------------------------------------ the bank
def test_craft_is_registered_with_its_class_attributes():
    cls = decompose.get("craft")
    assert cls is CRAFT and cls.fit_on == "crops" and cls.default_importance == "sobol" and cls.nonnegative
    d = CRAFT(n_concepts=3)
    assert d.patch_size == 64 and d.stride is None
    assert CRAFT(patch_size=[32, 48]).patch_size == (32, 48)  # a reloaded manifest gives lists
    for bad in ({"patch_size": 0}, {"patch_size": (8, 8, 8)}, {"patch_size": 8.5}, {"stride": -1},
                {"stride": "big"}):
        with pytest.raises(ParameterError):
            CRAFT(**bad)


def test_craft_fits_one_averaged_row_per_crop_and_encodes_per_position():
    g = torch.Generator().manual_seed(0)
    A = torch.rand(20, 3, 3, 8, generator=g)  # 20 crops
    d = CRAFT(n_concepts=4, seed=0, max_iter=50).fit(A)
    ref = NMF(n_concepts=4, seed=0, max_iter=50).fit(A.mean((1, 2)))
    assert torch.equal(d.components_, ref.components_) and d.n_crops_ == 20
    assert torch.equal(crop_rows(A), A.reshape(20, 9, 8).mean(1))
    new = torch.rand(2, 5, 7, 8, generator=g)
    U = d.encode(new)
    assert U.shape == (2, 5, 7, 4) and bool((U >= 0).all())
    assert torch.allclose(U[1, 3, 2], d.encode(new[1, 3, 2][None])[0], atol=1e-4)  # position by position
    assert d.fit_encode(A).shape == (20, 4)


def test_crop_images_equal_data_crops_on_non_square_multichannel_images():
    x = torch.randn(2, 5, 20, 30, generator=torch.Generator().manual_seed(1))
    patches, idx, boxes = data.crops(x, (8, 12), 0.5, out_size=(20, 30))
    again = crop_images(x, idx, boxes, (20, 30))
    assert torch.allclose(again, patches, atol=1e-6)
    raw = crop_images(x, idx[:3], boxes[:3])
    assert raw.shape == (3, 5, 8, 12)
    y0, x0 = int(boxes[2, 0]), int(boxes[2, 1])
    assert torch.equal(raw[2], x[int(idx[2]), :, y0:y0 + 8, x0:x0 + 12])


def test_crop_activations_stream_the_crops(tiny, tiny_images):
    split = cl.ModelSplit(tiny, "auto")
    rows, idx, boxes, pred = crop_activations(split, tiny_images[:5], 8, 4, crops_per_pass=10)
    patches, idx2, boxes2 = data.crops(tiny_images[:5], 8, 4, out_size=(16, 16))
    assert torch.equal(idx, idx2) and torch.equal(boxes, boxes2)
    A = split.g(patches)
    assert torch.allclose(rows, A.mean((1, 2)), atol=1e-6)
    assert torch.equal(pred, split.h(A).argmax(1))


# ------------------------------------------------------------------------------------------------ explainer
@pytest.fixture()
def craft_ex(tiny, tiny_images):
    split = cl.ModelSplit(tiny, "auto")
    ex = cl.ConceptExplainer(split, method="craft", n_concepts=4, seed=0,
                             method_params={"patch_size": 8, "stride": 4}, importance_params={"n_boot": 200})
    return ex.fit(tiny_images, target=1)


def test_explainer_fits_craft_on_crops_and_encodes_new_images_per_position(craft_ex, tiny_images):
    ex = craft_ex
    per_image = 3 * 3  # origins 0, 4, 8 on 16 px with patch 8 and stride 4
    c = ex.crops_
    assert isinstance(c, CropSet) and len(c) == 12 * per_image
    assert c.scores.shape == (12 * per_image, 4) and bool((c.scores >= 0).all())
    assert torch.equal(c.image_index, torch.arange(12).repeat_interleave(per_image))
    assert ex.decomposition_.n_crops_ == len(c)
    # the bank is the one NMF finds on the crop rows
    rows, *_ = crop_activations(ex.split, tiny_images, 8, 4)
    assert torch.allclose(ex.concepts_, NMF(4, seed=0).fit(rows).components_, atol=1e-6)
    new = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    U = ex.encode(ex.activations(new))
    assert U.shape == (3, 8, 8, 4) and bool((U >= 0).all())
    e = ex.explain(new)
    assert e.maps.shape == (3, 4, 16, 16)
    top = c.top(2, 5)
    assert len(top) <= 5 and bool((c.scores[top, 2][:-1] >= c.scores[top, 2][1:]).all())


def test_craft_defaults_to_sobol_with_intervals_that_survive_save_and_load(craft_ex, tiny, tmp_path):
    imp = craft_ex.importance_result_
    assert imp.method == "sobol" and imp.ci_low is not None and imp.ci_high is not None
    assert bool((imp.ci_low <= imp.values + 1e-6).all() and (imp.values <= imp.ci_high + 1e-6).all())
    assert math.isclose(float(imp.values.sum()), 1.0, rel_tol=1e-5)  # linear head: indices sum to 1
    p = craft_ex.save(tmp_path / "c.cl")
    back = cl.ConceptExplainer.load(p, model=tiny)
    assert back.method == "craft" and back.decomposition_.patch_size == 8
    assert torch.equal(back.importance_result_.ci_low, imp.ci_low)
    assert torch.equal(back.importance_result_.ci_high, imp.ci_high)
    assert torch.equal(back.crops_.scores, craft_ex.crops_.scores)
    assert torch.equal(back.crops_.boxes, craft_ex.crops_.boxes)
    # other methods keep their old default
    nmf = cl.ConceptExplainer(craft_ex.split, method="nmf", n_concepts=3).fit(torch.rand(4, 3, 16, 16), 1)
    assert nmf.importance_result_.method == "linear" and nmf.crops_ is None


def test_report_shows_intervals_tree_and_both_maps(craft_ex, tiny_images, tmp_path):
    ex = craft_ex
    ex.fit(tiny_images, target=1, recursive=True, layers=["features.1"],
           recursive_params={"threshold": 0.0, "max_split": 1, "n_top": 6})
    path = cl.report.write(ex, tiny_images[:6], tmp_path / "r", n_local=1)
    html = path.read_text()
    assert "Concept tree" in html and "img/maps_000.png" in html
    assert (tmp_path / "r" / "img" / "maps_000.png").is_file()
    assert " to " in html  # the per-concept 95 % interval
    assert "split into 3 sub-concepts" in html
    assert list((tmp_path / "r" / "img").glob("tree_*_*.png"))  # prototypes of the sub-concepts


# ------------------------------------------------------------------------------------------------ recursion
def test_ambiguity_known_values():
    assert ambiguity(torch.tensor([3, 3, 3, 3])) == 0.0
    assert math.isclose(ambiguity(torch.tensor([0, 1, 2, 3])), 1.0)
    assert math.isclose(ambiguity(torch.tensor([7, 7, 9, 9])), 0.5)  # log 2 / log 4
    assert ambiguity(torch.tensor([5])) == 0.0


def test_select_ambiguous_orders_by_importance_and_caps():
    amb = [0.9, 0.1, 0.6, 0.5, 0.7]
    imp = [0.1, 0.9, 0.3, 0.2, 0.4]
    assert select_ambiguous(amb, imp, threshold=0.5) == [4, 2, 3, 0]
    assert select_ambiguous(amb, imp, threshold=0.5, max_split=2) == [4, 2]
    assert select_ambiguous(amb, imp, threshold=0.95) == []
    with pytest.raises(ParameterError):
        select_ambiguous([0.1], [0.1, 0.2])


def test_the_rule_splits_exactly_the_concept_whose_top_crops_are_mixed(craft_ex, tiny_images):
    """Constructed case: concept 2's top crops are predicted as 4 different classes, the others' as one."""
    ex = craft_ex
    c = ex.crops_
    n_top = 4
    pred = torch.zeros(len(c), dtype=torch.long)
    mixed = c.top(2, n_top)
    assert len(mixed) == n_top
    pred[mixed] = torch.arange(n_top)
    # the other concepts' top crops must stay pure, so they must not overlap with concept 2's
    for j in (0, 1, 3):
        assert not set(c.top(j, n_top).tolist()) & set(mixed.tolist()), "pick another seed for this case"
    ex.crops_ = CropSet(image_index=c.image_index, boxes=c.boxes, scores=c.scores, predicted=pred)
    tree = build_tree(ex, tiny_images, ["features.1"], {"n_top": n_top, "threshold": 0.5, "n_children": 2})
    assert isinstance(tree, ConceptNode) and tree.index == -1 and len(tree.children) == 4
    assert [len(n.children) for n in tree.children] == [0, 0, 2, 0]
    assert tree[2].ambiguity == 1.0 and tree[0].ambiguity == 0.0


def test_tree_children_are_fitted_at_the_earlier_layer_with_the_right_shapes(craft_ex, tiny_images):
    ex = craft_ex
    ex.fit(tiny_images, target=1, recursive=True, layers="features.1",
           recursive_params={"threshold": 0.0, "n_top": 6, "n_children": 3, "max_split": 2})
    root = ex.tree_
    assert root.layer == ex.split.layer and root.bank.shape == (4, 16)  # TinyNet: 16 channels at "auto"
    split_nodes = [n for n in root.children if n.children]
    assert len(split_nodes) == 2
    order = torch.argsort(ex.importance_, descending=True)[:2].tolist()
    assert sorted(n.index for n in split_nodes) == sorted(order)  # the two most important ones
    for n in split_nodes:
        assert n.child_layer == "features.1" and n.bank.shape == (3, 8)  # 8 channels after the first ReLU
        assert bool((n.bank >= 0).all()) and n.importance_method == "gradient"
        shares = [set(ch.crop_ids.tolist()) for ch in n.children]
        assert sum(map(len, shares)) == len(set().union(*shares))  # the parent's crops are shared out
        assert set().union(*shares) <= set(n.crop_ids.tolist())
        for j, ch in enumerate(n.children):
            assert ch.layer == "features.1" and ch.index == j and ch.is_leaf
            assert ch.prototypes.dtype == torch.uint8 and ch.prototypes.shape[0] == min(len(ch.crop_ids), 5)
            assert len(ch.crop_ids) == 0 or ch.prototypes.shape[1:] == (8, 8, 3)  # crops at patch size
            assert 0.0 <= ch.ambiguity <= 1.0
    assert "features.1" in root.render()


class ThreeRelu(torch.nn.Module):
    """Three conv–ReLU stages, GAP, linear (no preset: the tree's thumbnails are min-max scaled)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3, padding=1),
            torch.nn.ReLU(), torch.nn.Conv2d(8, 10, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(10, 4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def test_two_levels_and_layer_errors(tiny_images):
    split = cl.ModelSplit(ThreeRelu(), "auto", probe=tiny_images[:2])
    ex = cl.ConceptExplainer(split, method="craft", n_concepts=3, method_params={"patch_size": 8})
    ex.fit(tiny_images, target=1, recursive=True, layers=["features.3", "features.1"],
           recursive_params={"threshold": 0.0, "n_top": 5, "n_children": 2, "max_split": 1,
                             "method_params": {"max_iter": 50}})
    deep = [p for p, _ in ex.tree_.walk() if len(p) == 3]
    assert len(deep) == 2 and all(ex.tree_[p].layer == "features.1" for p in deep)
    assert ex.tree_[deep[0][:2]].bank.shape == (2, 6)
    assert ex.tree_[deep[0][:1]].bank.shape == (2, 8)
    assert ex.tree_[deep[0][0]].ambiguity >= 0.0
    with pytest.raises(LayerError, match="before"):
        ex.fit(tiny_images, target=1, recursive=True, layers=["features.1", "features.3"])
    with pytest.raises(LayerError):
        ex.fit(tiny_images, target=1, recursive=True, layers=["features.9"])
    # no layers: the outputs of the stages before the layer (#22 item 5; tests/test_cli_defaults.py)
    assert ex.fit(tiny_images, target=1, recursive=True).tree_ is not None
    with pytest.raises(ParameterError):
        ex.fit(tiny_images, target=1, layers=["features.1"])
    with pytest.raises(ParameterError, match="unknown recursion option"):
        ex.fit(tiny_images, target=1, recursive=True, layers=["features.1"], recursive_params={"depth": 2})


def test_recursion_on_a_whole_image_method_and_the_tree_survives_save_load(tiny, tiny_images, tmp_path):
    split = cl.ModelSplit(tiny, "auto")
    ex = cl.ConceptExplainer(split, method="nmf", n_concepts=3, seed=0)
    ex.fit(tiny_images, target=1, recursive=True, layers=["features.1"],
           recursive_params={"threshold": 0.0, "n_top": 4, "n_children": 2})
    assert len(ex.crops_) == 12 and bool((ex.crops_.boxes[:, 2:] == 16).all())
    back = cl.ConceptExplainer.load(ex.save(tmp_path / "t.cl"), model=tiny)
    assert back.tree_.render() == ex.tree_.render()
    for (p1, a), (p2, b) in zip(ex.tree_.walk(), back.tree_.walk(), strict=True):
        assert p1 == p2 and torch.equal(a.crop_ids, b.crop_ids) and torch.equal(a.prototypes, b.prototypes)
        assert (a.bank is None) == (b.bank is None) and (a.bank is None or torch.equal(a.bank, b.bank))


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_fit_craft_with_recursion(tmp_path, tiny_images):
    from PIL import Image
    from typer.testing import CliRunner

    from conceptlens.cli import app

    folder = tmp_path / "imgs"
    folder.mkdir()
    pics = (tiny_images[:4] * 0.25 + 0.5).clamp(0, 1)
    for i, p in enumerate(pics):
        pic = (p.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pic).save(folder / f"{i}.png")
    out = tmp_path / "c.cl"
    args = ["fit", "--images", str(folder), "--out", str(out), "--model", "conftest:TinyNet",
            "--method", "craft", "-k", "3", "--patch", "8", "--stride", "4", "--target", "1", "--recursive",
            "--layers", "features.1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "95 % intervals" in res.output and "class node" in res.output
    from conceptlens.explainer import read_saved

    manifest, _ = read_saved(out)
    params = manifest["params"]
    assert params["method"] == "craft" and params["method_params"]["patch_size"] == 8
    assert "tree" in manifest and json.dumps(manifest["tree"])
    bad = CliRunner().invoke(app, ["fit", "--images", str(folder), "--out", str(out),
                                   "--model", "conftest:TinyNet", "--patch", "8"])
    assert bad.exit_code == 2 and "crop-fitted" in bad.output


# ------------------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_sobol_through_the_explainer_closed_form_and_sampled_agree_on_lite0(lite0_split, photos, photo_acts):
    x, A = photos[:3], photo_acts[:3]
    common = dict(method="nmf", n_concepts=10, importance="sobol", seed=0)
    exact = cl.ConceptExplainer(lite0_split, **common, importance_params={"n_boot": 200}).fit(x, 285, A=A)
    sampled = cl.ConceptExplainer(lite0_split, **common, importance_params={
        "n_boot": 200, "exact": False, "n_designs": 128}).fit(x, 285, A=A)
    e, s = exact.importance_.double(), sampled.importance_.double()
    assert exact.importance_result_.method == "sobol" == sampled.importance_result_.method
    rel = float((e - s).norm() / e.norm())
    print(f"\nlite0 concept Sobol, k=10, 3 images: closed form vs 128 designs, relative L2 diff {rel:.4f}")
    assert rel < 0.05
    lo = sampled.importance_result_.ci_low
    assert lo is not None and bool(torch.isfinite(lo).all())


@pytest.mark.slow
def test_concept_sobol_overhead_over_bare_head_calls_on_lite0(lite0_split, photo_acts):
    """k = 10 on the real head, CRAFT's n_designs = 32: time against replaying exactly the h calls needed."""
    from conceptlens.importance import sobol

    A = photo_acts
    d = NMF(10, seed=0).fit(A)
    U, W = d.encode(A), d.components_
    recorded: list[torch.Tensor] = []

    def recording(a: torch.Tensor) -> torch.Tensor:
        recorded.append(a.clone())
        return lite0_split.h(a)

    with torch.no_grad():
        ref = sobol.concept_total_indices(U, W, recording, 285, n_designs=32, n_boot=0)
        assert sum(r.shape[0] for r in recorded) == A.shape[0] * 32 * 11
        bare, full = [], []
        for _ in range(3):
            t = time.perf_counter()
            for a in recorded:
                lite0_split.h(a)[:, 285]
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = sobol.concept_total_indices(U, W, lite0_split.h, 285, n_designs=32, n_boot=1000)
            full.append(time.perf_counter() - t)
    assert torch.equal(res.per_image, ref.per_image)
    print(f"\nlite0 concept Sobol k=10 N={A.shape[0]}: {min(full):.2f} s vs bare h calls {min(bare):.2f} s "
          f"→ overhead {min(full) / min(bare) - 1:+.1%}")


@pytest.mark.slow
def test_craft_on_lite0_crops_with_a_tree(lite0, photos):
    split = cl.ModelSplit(lite0, "auto")
    ex = cl.ConceptExplainer(split, method="craft", n_concepts=5, seed=0,
                             method_params={"patch_size": 112, "stride": 112},
                             importance_params={"n_boot": 100})
    ex.fit(photos[:2], target=285, recursive=True, layers=["_blocks.11._swish@1"],
           recursive_params={"threshold": 0.0, "max_split": 1, "n_top": 4, "n_children": 2})
    assert len(ex.crops_) == 8 and ex.importance_result_.method == "sobol"
    split_nodes = [n for n in ex.tree_.children if n.children]
    assert len(split_nodes) == 1 and split_nodes[0].bank.shape == (2, 672)
    e = ex.explain(photos[:1], maps="implicit")
    assert e.maps.shape == (1, 5, 224, 224) and bool((e.maps >= 0).all())


@pytest.mark.slow
def test_craft_on_lite0_cuts_the_peers_grid_and_channels_last_changes_only_rounding(lite0, photos):
    split = cl.ModelSplit(lite0, "auto")
    ex = cl.ConceptExplainer(split, method="craft", n_concepts=5, seed=0, importance_params={"n_boot": 0})
    ex.fit(photos[:2], target=285)
    # patch 64, stride 51 on 224 px: 4 × 4 crops per photo, no border-aligned ones (they would add 56 %)
    assert len(ex.crops_) == 32 and int(ex.crops_.boxes[:, :2].max()) == 153
    rows, _, _, pred = crop_activations(split, photos[:2], 64)
    rows_c, _, _, pred_c = crop_activations(split, photos[:2], 64, channels_last=False, batch_size=32)
    torch.testing.assert_close(rows, rows_c, rtol=1e-4, atol=1e-5)
    assert torch.equal(pred, pred_c) and torch.equal(pred, ex.crops_.predicted)
    assert all(p.is_contiguous() for p in lite0.parameters())  # the model is given back as it was


def test_explainer_fit_honours_crafts_border_setting() -> None:
    """CRAFT(border=True) keeps the border-aligned crops in an in-memory ConceptExplainer.fit too (the
    explainer passed no border, so the grid was always the default 'auto')."""
    import conceptlens as cl

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    split = cl.ModelSplit(model, "1")
    x = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    n = {}
    for border in (True, False):
        params = {"patch_size": 8, "stride": 8, "border": border, "max_iter": 5}
        ex = cl.ConceptExplainer(split, method="craft", n_concepts=2, seed=0, method_params=params)
        n[border] = int(ex.fit(x, target=0).crops_.image_index.shape[0])
    assert n == {True: 2 * 4 * 4, False: 2 * 3 * 3}  # starts 0, 8, 16 (+ 22 on the border) per side
