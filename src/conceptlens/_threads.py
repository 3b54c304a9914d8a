"""How many threads each stage runs with: a context manager, and the reason for the choices.

Measured on a 2-core machine (torch 2.14, MKL + OpenMP), a loop of small ops (a ``[64, 1280] @ [1280, 25]``
product, a clamp, a sum; 3,000 times) took 0.6 s with one thread and 1.8–5.8 s with two; beside one
competing 2-thread CPU-bound process, 0.85 s with one thread and 22 s with two. Every parallel region
ends at a barrier, and when one of its threads has been descheduled by the other process the whole region
waits for it: many short regions multiply the cost of sharing the cores far beyond the fair 2×. A large
product (``[2000, 1280] @ [1280, 1280]``) is the other way round: 3.4 s with two threads beside the same
load against 4.9 s with one. So a stage made of many small ops runs in one thread, and one made of large
products keeps the process's threads. (A later rerun of the same loop at two threads: 0.19 s alone, 0.51 s
beside the competitor, 0.85 s with ``OMP_WAIT_POLICY=PASSIVE``: the wait policy is no cure. The effect
depends on the op mix, hence the measurement per stage below.)

The choice is per stage and fixed, never read from the load: results depend on the thread count (sums
are split differently), and a result must not change with the machine's load.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

__all__ = ["threads", "small_ops"]


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (at most the process's current count), then restore it.

    Parameters
    ----------
    n
        Threads for the block; None (or a number ≥ the current count) leaves the count as it is.

    Yields
    ------
    int
        The thread count inside the block.
    """
    before = torch.get_num_threads()
    inside = before if n is None else max(1, min(int(n), before))
    if inside != before:
        torch.set_num_threads(inside)
    try:
        yield inside
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def small_ops() -> AbstractContextManager[int]:
    """``threads(1)``: for a loop of small ops, where threads cost more at their barriers than they give."""
    return threads(1)
