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

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import torch

__all__ = ["threads", "small_ops", "one_thread_each", "one_thread_pool"]

T = TypeVar("T")


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


@contextmanager
def one_thread_pool(workers: int, prefix: str = "conceptlens") -> Iterator[ThreadPoolExecutor | None]:
    """``workers`` worker threads with one intra-op thread each, the calling thread at one thread too.

    For a stage cut into independent one-thread pieces that meet once per pass (a chunk of a batch, a
    block of rows): the threads never wait for each other inside an op. The calling thread's own ops (the
    small ones between the passes) run in one thread, since a team of two would keep a thread spinning at
    each barrier beside the workers. On exit the workers end and the process's thread count is restored.

    Parameters
    ----------
    workers
        Worker threads; ≤ 1 yields None (the caller runs its plain path, nothing is changed).
    prefix
        The workers' thread names.

    Yields
    ------
    ThreadPoolExecutor or None
    """
    if workers <= 1:
        yield None
        return
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(int(workers), initializer=torch.set_num_threads, initargs=(1,),
                              thread_name_prefix=prefix)
    try:
        torch.set_num_threads(1)
        yield pool
    finally:
        pool.shutdown(wait=True)
        torch.set_num_threads(before)  # the workers' start set the count new threads inherit


def one_thread_each(calls: Sequence[Callable[[], T]], workers: int | None = None) -> list[T]:
    """The results of ``calls``, each run in a worker thread of its own with one intra-op thread.

    For independent calls that run in one thread anyway (a method declaring ``fit_threads = 1``): each
    result is the one a sequential run gives, bit for bit, while up to ``workers`` of them (default: the
    process's intra-op thread count) use the cores side by side. Beside a busy process this is also the
    robust way to use two cores: the workers never wait for each other inside an op. With one worker, or
    one call, the calls run one after the other in the calling thread.

    Parameters
    ----------
    calls
        Callables without arguments.
    workers
        Threads at most; None: ``torch.get_num_threads()``.

    Returns
    -------
    list
        The calls' results, in order; the first exception (in order) is raised after every call ended.
    """
    before = torch.get_num_threads()
    p = min(len(calls), max(1, before if workers is None else int(workers)))
    if p <= 1:
        return [c() for c in calls]
    try:
        with ThreadPoolExecutor(p, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = [pool.submit(c) for c in calls]
            return [f.result() for f in futures]
    finally:
        torch.set_num_threads(before)  # the workers' start set the count new threads inherit
