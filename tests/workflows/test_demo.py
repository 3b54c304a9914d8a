"""conceptlens.workflows.demo: the demo's budgets and sections come from the methods' declarations."""

from __future__ import annotations

import torch

import conceptlens as cl
from conceptlens import decompose
from conceptlens.workflows.demo import DEMO_METHODS, demo_params, sweep_sections
from helpers import TinyNet


def test_demo_params_follow_the_declarations() -> None:
    names = DEMO_METHODS.split(",")
    p = demo_params(names, 224)
    # crop-fitted methods take the demo's crops as theirs; EDDP gets its declared budget; nothing else
    assert p == {"craft": {"patch_size": 224}, "eddp": {"max_iter": 300, "ura_weight": 0.0}}
    for m in names:
        if m in p and m != "masks":
            cls = decompose.get({"ice": "nmf"}.get(m, m))
            assert set(cls.demo_params) <= set(p[m])
    assert demo_params(["ice", "masks"], 224) == {}


def test_sweep_sections_only_for_a_method_with_a_sweep_param() -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    A = split.g(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert sweep_sections("0,1", ["ice", "pca", "masks"], A, split, 0, 2, 0) == []
    assert sweep_sections("  ", ["face"], A, split, 0, 2, 0) == []
