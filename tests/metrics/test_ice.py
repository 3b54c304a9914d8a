"""ICE metrics on hand-computed cases and on a fitted explainer."""

from __future__ import annotations

import pytest
import torch

import conceptlens as cl
from conceptlens import metrics


def test_fid_r_hand_computed() -> None:
    F = torch.tensor([2.0, -4.0, 1.0])
    Fh = torch.tensor([1.5, -3.0, 1.0])
    # Σ|F − F̂| = 0.5 + 1 + 0 = 1.5 ; Σ|F| = 7
    assert metrics.fid_r(F, Fh) == pytest.approx(1.5 / 7)
    assert metrics.fid_r(F, F) == 0.0


def test_fid_c_hand_computed() -> None:
    logits = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    approx = torch.tensor([[2.0, 1.0], [3.0, 2.0], [1.0, 0.5], [1.0, 0.0]])
    assert metrics.fid_c(logits, approx) == pytest.approx(0.5)


def test_reconstruction_and_sparsity() -> None:
    A = torch.tensor([[3.0, 4.0]])
    assert metrics.reconstruction_error(A, torch.zeros_like(A)) == pytest.approx(1.0)
    assert metrics.reconstruction_error(A, A) == 0.0
    assert metrics.sparsity(torch.tensor([[0.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.25)


def test_fidelity_of_exact_pca_is_perfect(tiny, tiny_images) -> None:
    split = cl.ModelSplit(tiny, "auto", probe=tiny_images[:1])
    C = split.activation_shape[-1]
    ex = cl.ConceptExplainer(split, "pca", C).fit(tiny_images, 0)
    fid = cl.metrics.fidelity(ex, tiny_images)
    assert fid["fid_c"] == 1.0 and fid["fid_r"] < 1e-5
    few = cl.ConceptExplainer(split, "kmeans", 2).fit(tiny_images, 0)
    assert cl.metrics.fidelity(few, tiny_images)["fid_r"] > fid["fid_r"]
