"""NMF's U half-step over blocks of rows, each in a worker thread with one intra-op thread.

Notation as in :mod:`conceptlens.decompose._nmf_solvers`: ``A [n, C]``, ``Uᵀ [k, n]``, ``W [k, C]``.

Why: the U half-step is ``k`` HALS row updates per sweep, each two kernels over the ``n`` rows (for the
12,000 × 1,280, k = 25 fit, ~300 kFLOP each). With the process's two intra-op threads, each of those
kernels ends at a barrier of both threads, and beside another CPU-bound process a barrier waits whenever
the scheduler has parked one of them: the default fit, 1.5× faster with two threads than with one alone,
took up to 3.9× longer than with one beside a busy 2-thread process. The U half-step is separable by rows
of ``A`` (each row's codes solve their own non-negative least squares), and so are the products the W
half-step needs (``Uᵀ A = Σ_b U_bᵀ A_b``, ``Uᵀ U = Σ_b U_bᵀ U_b``): each of ``P`` contiguous blocks of
rows gets its cross term, its sweeps and its share of the W half-step's products in one thread, and the
threads meet once per iteration. The W half-step itself (``k × C``) and the bookkeeping are small and run
in the calling thread, in one thread.

Each block stops its sweeps by its own ``delta`` rule, and the products are summed in block order: a
fit is deterministic for a seed and thread count (never for the load), and differs from the one-block fit
by rounding and by where each block's sweeps stopped.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from conceptlens.decompose._nmf_products import DataProducts
from conceptlens.decompose._nmf_solvers import Solver

__all__ = ["RowBlocks"]


class RowBlocks:
    """The U half-step over contiguous blocks of rows of ``A``, one block per worker of ``pool``.

    Parameters
    ----------
    data
        ``A [n, C]`` with its products (:class:`~conceptlens.decompose._nmf_products.DataProducts`), cut
        into at most ``parts`` blocks (:meth:`~conceptlens.decompose._nmf_products.DataProducts.row_blocks`).
    pool
        Worker threads with one intra-op thread each (:func:`conceptlens._threads.one_thread_pool`).
    parts
        Blocks at most.
    """

    def __init__(self, data: DataProducts, pool: ThreadPoolExecutor, parts: int) -> None:
        self.data = data
        self.blocks = data.row_blocks(parts)
        self.sizes = [b.A.shape[0] for b in self.blocks]
        self.pool = pool

    def _map(self, fn: Any) -> list[Any]:
        return list(self.pool.map(fn, range(len(self.sizes))))

    @property
    def sparse(self) -> bool:
        """Whether the products use CSR copies."""
        return self.data.sparse

    def mean_max(self) -> tuple[torch.Tensor, float]:
        """``(mean(A), max(A))`` (:meth:`DataProducts.mean_max`)."""
        return self.data.mean_max()

    def mm(self, M: torch.Tensor) -> torch.Tensor:
        """``A @ M``: ``[n, C] × [C, r] → [n, r]``, block by block in the workers."""
        return torch.cat(self._map(lambda i: self.blocks[i].mm(M)))

    def rmm(self, M: torch.Tensor) -> torch.Tensor:
        """``Aᵀ @ M``: ``[C, n] × [n, r] → [C, r]``, the blocks' products summed in block order."""
        cuts = M.split(self.sizes)
        return _sum(self._map(lambda i: self.blocks[i].rmm(cuts[i])))

    def u_half_step(
        self, solve: Solver, Ut: torch.Tensor, W: torch.Tensor, sweeps: int, *, floor: float, delta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The U half-step and the W half-step's products.

        Parameters
        ----------
        solve
            The solver (:data:`~conceptlens.decompose._nmf_solvers.SOLVERS`).
        Ut
            ``[k, n]`` current codes.
        W
            ``[k, C]`` the bank.
        sweeps, floor, delta
            As in :func:`~conceptlens.decompose._nmf_solvers.hals`, per block.

        Returns
        -------
        tuple
            ``Uᵀ [k, n]`` the new codes, ``R = Uᵀ A [k, C]`` and ``S = Uᵀ U [k, k]``.
        """
        Q = W @ W.T
        WT = W.T.contiguous()

        def run(i: int, Ut_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            d = self.blocks[i]
            U_b = solve(d.mm(WT).T.contiguous(), Q, Ut_b, sweeps, floor=floor, delta=delta)
            return U_b, d.rmm(U_b.T).T, U_b @ U_b.T

        cuts = Ut.split(self.sizes, dim=1)
        outs = self._map(lambda i: run(i, cuts[i]))
        return torch.cat([o[0] for o in outs], dim=1), _sum([o[1] for o in outs]), _sum([o[2] for o in outs])


def _sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """``Σ parts`` in their order (the same sum on every run), contiguous."""
    out = parts[0].contiguous()
    for p in parts[1:]:
        out = out + p
    return out
