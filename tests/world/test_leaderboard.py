"""Tests of the ground-truth leaderboard's runner: its registries and the options it gives each method
(read from the methods' declarations, never from their names)."""

from __future__ import annotations

import pytest
import torch

from conceptlens import decompose
from conceptlens.errors import ParameterError
from conceptlens.world import leaderboard as gt
from conceptlens.world.concepts import ConceptWorld


def test_registries_are_complete() -> None:
    names = gt.registered_methods()
    assert {"nmf", "pca", "kmeans"} <= set(names)
    assert {"linear", "gradient"} <= set(gt.registered_importances())


@pytest.mark.parametrize("quick", [False, True])
def test_method_params_come_from_the_declarations(quick: bool) -> None:
    names = gt.registered_methods()
    for name in names:
        cls = decompose.get(name)
        got = gt.method_params(name, 64, quick)
        # crops of one layout cell (a third of the image side) for a method fitted on crops, nothing else
        assert got.get("patch_size") == (21 if cls.fit_on == "crops" else None), name
        rest = {k: v for k, v in got.items() if k != "patch_size"}
        assert rest == (dict(cls.quick_params) if quick else {}), name
    # the values the leaderboard has always used
    assert gt.method_params("craft", 64, True) == {"patch_size": 21, "max_iter": 100}
    assert gt.method_params("craft", 16, False) == {"patch_size": 8}
    if quick:
        assert gt.method_params("eddp", 64, True) == {"max_iter": 60, "polish_iter": 10, "n_init": 1,
                                                       "init_rows": 4000}
        assert gt.method_params("face", 64, True) == {"max_iter": 20}
        assert gt.method_params("nmf", 64, True) == {"max_iter": 100}
        assert gt.method_params("pca", 64, True) == gt.method_params("kmeans", 64, True) == {}


def test_class_images_are_the_first_of_each_class() -> None:
    world = ConceptWorld(seed=0)
    data = gt.class_images(world, 5, [0, 3], seed=2)
    x, y, masks, _ = world.sample(max(64, int(1.3 * 5 * world.n_classes)), seed=2)
    for c in (0, 3):
        idx = (y == c).nonzero().squeeze(1)[:5]
        assert torch.equal(data[c][0], x[idx]) and torch.equal(data[c][1], masks[idx])


@pytest.mark.slow
def test_every_score_is_measured_on_held_out_images(monkeypatch, world_model) -> None:
    """#20 item 4: the explainer is fitted on one part of each class's images and scored on the other."""
    from conceptlens.explainer import ConceptExplainer

    fitted, scored = [], []
    fit_explainer, explain = gt._fit_explainer, ConceptExplainer.explain

    def spy_fit(split, method, k, x, *args):  # type: ignore[no-untyped-def]
        fitted.append(x)
        return fit_explainer(split, method, k, x, *args)

    def spy_explain(self, x, **kw):  # type: ignore[no-untyped-def]
        scored.append(x)
        return explain(self, x, **kw)

    monkeypatch.setattr(gt, "_fit_explainer", spy_fit)
    monkeypatch.setattr(ConceptExplainer, "explain", spy_explain)
    p = gt.run(True, methods=["nmf"], n_per_class=10, n_concepts=4, classes=[0], verbose=False)
    (x_fit,), (x_scored,) = fitted, scored
    assert x_fit.shape[0] == x_scored.shape[0] == 5
    assert p["config"]["n_fit_per_class"] == p["config"]["n_held_out_per_class"] == 5
    world = ConceptWorld(**world_model.world_config)
    x_all = gt.class_images(world, 10, [0], seed=0)[0][0]
    # every image of the class is on exactly one side
    for img in x_all:
        sides = [any(torch.equal(img, o) for o in part) for part in (x_fit, x_scored)]
        assert sum(sides) == 1
    row = next(r for r in p["rows"] if r["method"] == "nmf")
    assert row["c_insertion_fit"] is not None and row["c_insertion"] is not None
    with pytest.raises(ParameterError, match="n_per_class"):
        gt.run(True, methods=["nmf"], n_per_class=1, classes=[0], verbose=False)
