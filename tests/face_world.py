"""FACE's toy world, shared by the FACE solver, metric and sweep tests (importable as ``face_world``).

Activations ``A = U* W*`` built from 6 non-negative parts of decreasing energy, and a GAP + MLP head that
reads mostly the *low-energy* parts. A rank-3 NMF keeps the high-energy parts and loses what the head
looks at, so the KL term has something to fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

N, S, C, KT, K = 48, 3, 12, 6, 4


class GapMLP(nn.Module):
    """``[B, h, w, C] → [B, K]``: global average pool, then a small tanh MLP."""

    def __init__(self, W_true: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        # First layer reads the three low-energy parts (rows 3..5 of W*), plus a little of everything.
        mix = torch.randn(16, 3, generator=g, dtype=torch.float64)
        w1 = 4.0 * mix @ W_true[3:].double() + 0.1 * torch.randn(16, C, generator=g, dtype=torch.float64)
        self.l1 = nn.Linear(C, 16).to(dtype)
        self.l2 = nn.Linear(16, K).to(dtype)
        with torch.no_grad():
            self.l1.weight.copy_(w1)
            self.l1.bias.zero_()
            self.l2.weight.copy_(torch.randn(K, 16, generator=g, dtype=torch.float64))
            self.l2.bias.zero_()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(a.mean((1, 2)))))


def make_world(seed: int = 0, dtype: torch.dtype = torch.float32, n: int = N) -> tuple[torch.Tensor, GapMLP]:
    g = torch.Generator().manual_seed(seed)
    W_true = torch.rand(KT, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 2
    energy = torch.linspace(2.0, 0.3, KT, dtype=torch.float64)
    U_true = torch.rand(n, S, S, KT, generator=g, dtype=torch.float64) ** 3 * energy
    head = GapMLP(W_true, dtype)
    return (U_true @ W_true).to(dtype), head



def single_thread() -> Iterator[None]:
    """Run on one intra-op thread, then restore the setting (``yield from`` it in a module fixture).

    Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the second thread makes
    every small kernel wait (measured: 25× slower).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
