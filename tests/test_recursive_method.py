"""CRAFT's concept tree fits the sub-concepts with the explainer's own method (not always NMF)."""

from __future__ import annotations

import torch

import conceptlens as cl
from helpers import TinyNet


def _split_nodes(tree: object) -> list:
    return [n for p, n in tree.walk() if p and n.children]  # type: ignore[attr-defined]


def test_tree_of_a_pca_explainer_has_pca_sub_banks(tiny_images: torch.Tensor) -> None:
    ex = cl.ConceptExplainer(cl.ModelSplit(TinyNet(), "features.3"), method="pca", n_concepts=3,
                             progress=False)
    ex.fit(tiny_images, target=1, recursive=True, layers=["features.1"],
           recursive_params={"threshold": 0.0, "max_split": 1, "n_top": 6})
    nodes = _split_nodes(ex.tree_)
    assert len(nodes) == 1
    bank = nodes[0].bank.double()
    # PCA's axes: orthonormal rows (an NMF bank would be non-negative instead)
    torch.testing.assert_close(bank @ bank.T, torch.eye(bank.shape[0], dtype=torch.float64), atol=1e-5,
                               rtol=0)
    assert bool((bank < 0).any())


def test_tree_of_an_nmf_explainer_keeps_nmf_sub_banks(tiny_images: torch.Tensor) -> None:
    ex = cl.ConceptExplainer(cl.ModelSplit(TinyNet(), "features.3"), method="nmf", n_concepts=3,
                             progress=False)
    ex.fit(tiny_images, target=1, recursive=True, layers=["features.1"],
           recursive_params={"threshold": 0.0, "max_split": 1, "n_top": 6})
    (node,) = _split_nodes(ex.tree_)
    sp = cl.ModelSplit(ex.split.model, "features.1", probe=tiny_images[:2], progress=False)
    from conceptlens.decompose import NMF
    from conceptlens.io.crops import crop_images

    crops = ex.crops_
    ids = node.crop_ids
    A = sp.g(crop_images(tiny_images, crops.image_index[ids], crops.boxes[ids], (16, 16)), progress=False)
    d = NMF(n_concepts=node.bank.shape[0], seed=ex.seed).fit(A, layer_name=sp.layer)
    assert torch.equal(node.bank, d.components_)
