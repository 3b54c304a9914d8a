"""Helpers shared by the tests (importable as ``helpers``: pyproject's pytest ``pythonpath`` adds tests/)."""

from __future__ import annotations

import torch
from torch import nn

import conceptlens as cl


class TinyNet(nn.Module):
    """A small CNN (conv-ReLU ×2, GAP, Linear) with a preset, for fast unit tests."""

    def __init__(self, n_classes: int = 4, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.features = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * width, n_classes)
        self.preset = cl.data.Preset(size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                                     classes=[f"class {i}" for i in range(n_classes)])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class GapLinear(torch.nn.Module):
    """``h(A) = mean_hw(A) @ w.T + b`` on ``A [B, ..., C]``: the head for which the closed forms are exact."""

    def __init__(self, C: int, K: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(C, K)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.reshape(a.shape[0], -1, a.shape[-1]).mean(1))
