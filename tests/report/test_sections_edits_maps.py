"""conceptlens.report.sections.edits and .maps on a tiny NMF explainer: one row per concept, ranked by
importance, with the reconstruction rule's text; both kinds of maps per shown image."""

from __future__ import annotations

import pytest
import torch

import conceptlens as cl
from conceptlens.report.sections.edits import edit_section
from conceptlens.report.sections.maps import maps_section
from helpers import TinyNet


@pytest.fixture(scope="module")
def nmf_ex() -> tuple[cl.ConceptExplainer, torch.Tensor]:
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ex = cl.ConceptExplainer(cl.ModelSplit(TinyNet()), method="nmf", n_concepts=3, progress=False).fit(x, 1)
    return ex, x


def test_edit_section_ranks_concepts_and_says_the_rule(nmf_ex) -> None:
    ex, x = nmf_ex
    A = ex.activations(x)
    s = edit_section(ex, A, [f"im{i}" for i in range(6)], n_columns=2)
    assert s.anchor == "concept-edits" and list(s.images) == ["edits.png"]
    order = torch.argsort(-ex.importance_, stable=True).tolist()
    assert [s.html.index(f'href="#concept-{j}">concept {j}</a>') for j in order] == sorted(
        s.html.index(f'href="#concept-{j}">concept {j}</a>') for j in order)
    assert "part of the reconstruction" in s.html and "Δ im1" in s.html and "Δ im2" not in s.html
    r = ex.edit(A=A, remove=[order[0]])
    assert f"{int(r.flipped.sum())}/6" in s.html


def test_maps_section_shows_both_maps_of_the_top_concepts(nmf_ex) -> None:
    ex, x = nmf_ex
    s = maps_section(ex, x, n_images=2, n_concepts=2, names=["a<", "b"])
    assert sorted(s.images) == ["maps_000.png", "maps_001.png"]
    assert "<h3>a&lt;</h3>" in s.html and s.html.count("<img") == 2
    # one tile per (concept, kind): 2 concepts × upsampled and implicit, side by side
    assert s.images["maps_000.png"].shape[1] > s.images["maps_000.png"].shape[0]
