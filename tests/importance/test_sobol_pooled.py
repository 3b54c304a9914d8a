"""Sampled Sobol importance on pooled codes for heads that read a layer through its spatial mean only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.importance.sobol import concept_total_indices
from helpers import GapLinear, TinyNet

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


class PoolMLP(nn.Module):
    """A non-linear head that pools first: ``fc2(relu(fc1(mean_hw A)))``."""

    def __init__(self, C: int, K: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = nn.Linear(C, 7), nn.Linear(7, K)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(a.reshape(a.shape[0], -1, a.shape[-1]).mean(1))))


def _max_head(a: torch.Tensor) -> torch.Tensor:
    """Reads the largest value per channel: not a function of the mean."""
    return a.reshape(a.shape[0], -1, a.shape[-1]).amax(1)[:, :3] * torch.tensor([1.0, -2.0, 0.5])


def _codes() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 4, 5, 3, generator=g), torch.rand(3, 8, generator=g)  # U [N,h,w,k], W [k,C]


@pytest.mark.parametrize("head", [GapLinear(8, 4), PoolMLP(8, 4)], ids=["gap-linear", "gap-mlp"])
def test_pooled_codes_give_the_same_indices_for_a_pool_first_head(head: nn.Module) -> None:
    U, W = _codes()
    with torch.no_grad():
        full = concept_total_indices(U, W, head, 1, n_designs=16, n_boot=50)
        pooled = concept_total_indices(U, W, head, 1, n_designs=16, n_boot=50, pooled=True)
    torch.testing.assert_close(pooled.per_image, full.per_image, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pooled.indices, full.indices, rtol=1e-4, atol=1e-6)
    assert pooled.n_evaluations == full.n_evaluations
    assert float(full.indices.max()) > 0.05  # the indices are not trivially zero


def test_pooling_changes_the_numbers_of_a_head_that_does_not_pool_first() -> None:
    # the caller's promise matters: a max-pool head gives other indices on the mean codes
    U, W = _codes()
    full = concept_total_indices(U, W, _max_head, 1, n_designs=16, n_boot=0)
    pooled = concept_total_indices(U, W, _max_head, 1, n_designs=16, n_boot=0, pooled=True)
    assert (pooled.indices - full.indices).abs().max() > 1e-3


class ConvHead(nn.Module):
    """features → a 3×3 convolution after the cut → GAP → linear: not a function of the layer's mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(self.features(x)).mean((2, 3)))


class PoolMLPNet(nn.Module):
    """features → GAP → MLP: pools first, but is no GAP + linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_model_split_knows_which_heads_pool_first() -> None:
    probe = torch.randn(2, 3, 16, 16)
    tiny = cl.ModelSplit(TinyNet(), "features")  # GAP + linear
    assert tiny.linear_head() is not None and tiny.pools_first()
    mlp = cl.ModelSplit(PoolMLPNet().eval(), "features", probe=probe)
    assert mlp.linear_head() is None and mlp.pools_first()
    conv = cl.ModelSplit(ConvHead().eval(), "features", probe=probe)
    assert not conv.pools_first()
