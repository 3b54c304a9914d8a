"""Tests of the ground-truth leaderboard's runner: its registries and the options it gives each method
(read from the methods' declarations, never from their names)."""

from __future__ import annotations

import pytest
import torch

from conceptlens import decompose
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
