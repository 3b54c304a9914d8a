"""conceptlens.report.sections.tree: the concept tree as a nested list with one prototype strip per node."""

from __future__ import annotations

import torch

from conceptlens.recursive import ConceptNode
from conceptlens.report.sections.tree import tree_section


def _leaf(layer: str, index: int, importance: float, n: int) -> ConceptNode:
    return ConceptNode(layer=layer, index=index, importance=importance, ambiguity=0.25,
                       crop_ids=torch.arange(n), prototypes=torch.full((n, 8, 8, 3), 200, dtype=torch.uint8))


def test_tree_section_lists_nodes_by_importance_with_strips() -> None:
    kids = (_leaf("early", 0, 0.5, 2), _leaf("early", 1, 0.1, 1))
    split = ConceptNode(layer="late", index=1, importance=2.0, ambiguity=0.9, crop_ids=torch.arange(3),
                        prototypes=torch.zeros(3, 8, 8, 3, dtype=torch.uint8), children=kids,
                        importance_method="gradient")
    root = ConceptNode(layer="late<b>", index=-1, importance=float("nan"), ambiguity=float("nan"),
                       crop_ids=torch.zeros(0, dtype=torch.long),
                       prototypes=torch.zeros(0, 8, 8, 3, dtype=torch.uint8),
                       children=(_leaf("late", 0, 1.0, 2), split))
    s = tree_section(root)
    assert s.title == "Concept tree"
    # the most important concept (1) comes first; its children are nested under it
    assert s.html.index("concept 1</b>") < s.html.index("concept 0</b>")
    assert "split into 2 sub-concepts at <code>early</code> (importance: gradient)" in s.html
    assert "1 concept(s) were split" in s.html and "late&lt;b&gt;" in s.html
    assert sorted(s.images) == ["tree_0.png", "tree_1.png", "tree_1_0.png", "tree_1_1.png"]
    assert s.images["tree_1_0.png"].shape[-1] == 3
