"""The masks' forward and backward passes, split over worker threads that run one intra-op thread each.

Why: one step of the search is a forward and backward pass of the model on ``3n`` small images. With the
process's threads inside every op (intra-op), each of the model's few hundred ops ends at a barrier of all
threads; beside another CPU-bound process, whose threads the scheduler interleaves with ours, every barrier
waits for a descheduled thread, and the masks took 4.6× their time alone where fair sharing of the cores
costs 2×. Here the batch is cut into ``P`` contiguous chunks of images (``P`` = the process's thread count,
at most the number of images), and each chunk goes through the model and back in a thread of its own with
one intra-op thread, and the calling thread's own small ops (the generator, the loss, Adam) run in one
thread too: the threads meet once per pass instead of once per op. Measured on 2 cores, one search step of
EfficientNet-Lite0 on one photo (3 images of 224²): alone 152 ms intra-op, 175 ms split (the 2 + 1 images
do not balance); beside one busy 2-thread process 583 ms intra-op (3.8×), 249 ms split (1.4×); with the
calling thread left at two threads, 866 ms. Two photos alone: 288 ms intra-op, 294 ms split.

The result of a chunk depends only on its images (each runs in one thread), so a run is deterministic for
a seed and thread count, never for the load. With one thread (or one image) the pass is the plain call.
Each worker has its own copy of the model, since the hooks that capture the matched layers' outputs keep
state per module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from conceptlens.split.sites import CallSite, capture, logits_of

__all__ = ["SplitForward"]


def _one_thread() -> None:
    torch.set_num_threads(1)


class SplitForward:
    """``(logits [N,K], {site: φ_ℓ [N,...]})`` of a batch, computed in ``P`` worker threads.

    While it is open, the calling thread runs with one intra-op thread too. Use it as a context manager:
    the threads end, and the process's thread count is restored, on exit.

    Parameters
    ----------
    model
        The classifier (in eval mode, parameters frozen for the search).
    sites
        The call sites whose outputs are captured.
    workers
        ``P``; None: the process's intra-op thread count. One worker (or a model on a GPU) is the plain call
        in the calling thread.
    """

    def __init__(self, model: nn.Module, sites: Sequence[CallSite], workers: int | None = None) -> None:
        self.sites = list(sites)
        self.workers = max(1, torch.get_num_threads() if workers is None else int(workers))
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        if not on_cpu:
            self.workers = 1
        try:
            self.models = [model] + [copy.deepcopy(model) for _ in range(self.workers - 1)]
        except Exception:  # a model that cannot be copied (an open handle, a C++ module): the plain call
            self.models, self.workers = [model], 1
        self._threads = torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, initializer=_one_thread, thread_name_prefix="masks")
            # the calling thread's own small ops (the generator, the loss, Adam) in one thread as well: a
            # team of two would keep a second thread spinning at each barrier beside the workers
            torch.set_num_threads(1)

    def __enter__(self) -> SplitForward:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the worker threads and restore the process's thread count (their start set it to 1)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            torch.set_num_threads(self._threads)

    def _map(self, fn: Any, *chunks: Any) -> list[Any]:
        """``fn`` over the chunks in the workers, results in order."""
        if self._pool is None:
            raise RuntimeError("SplitForward has no workers (closed, or one worker): use its plain call")
        return list(self._pool.map(fn, *chunks))

    @property
    def model(self) -> nn.Module:
        """The model itself (the first worker's)."""
        return self.models[0]

    def chunks(self, n: int) -> list[int]:
        """The sizes of the contiguous chunks a batch of ``n`` images is cut into (larger ones first)."""
        p = min(self.workers, n)
        return [n // p + (1 if i < n % p else 0) for i in range(p)]

    def _plain(self, i: int, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with capture(self.models[i], self.sites) as acts:
            out = logits_of(self.models[i](x))
        return out, {k: v[:rows] for k, v in acts.items()} if rows > 0 else {}

    def __call__(
        self, x: torch.Tensor, rows: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits [N,K], {site name: output [rows,...]})`` of ``x [N,3,H,W]``, differentiable in ``x``.

        ``rows``: the layers' outputs are kept for the first ``rows`` images only (None: all ``N``; the
        masks match the activations of the explanation ``e``, the first of the three images per row).
        """
        n = x.shape[0]
        rows = n if rows is None else max(0, min(int(rows), n))
        sizes = self.chunks(n)
        if self._pool is None or len(sizes) == 1:
            return self._plain(0, x, rows)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        need = [max(0, min(sz, rows - o)) for sz, o in zip(sizes, starts, strict=True)]
        names = [s.name for s in self.sites] if rows > 0 else []
        if not (torch.is_grad_enabled() and x.requires_grad):
            with torch.no_grad():
                parts = self._map(self._plain, range(len(sizes)), x.split(sizes), need)
            return _join(parts, names)
        out, *acts = _Split.apply(x, self, sizes, need, names)
        return out, dict(zip(names, acts, strict=True))

    def logits(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``[N,K]`` logits of ``x`` without gradient, in chunks of ``batch_size`` images per pass."""
        with torch.no_grad():
            return torch.cat([self(x[i: i + batch_size], 0)[0] for i in range(0, x.shape[0], batch_size)])


def _join(parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]], names: list[str]
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    acts = {k: torch.cat([p[1][k] for p in parts if k in p[1]]) for k in names}
    return torch.cat([p[0] for p in parts]), acts


class _Split(torch.autograd.Function):
    """The model on chunks of the batch in the workers; the backward pass runs in the same workers."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, runner: SplitForward, sizes: list[int], need: list[int],
                names: list[str]) -> tuple[torch.Tensor, ...]:
        def run(i: int, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
            with torch.enable_grad():
                leaf = chunk.detach().requires_grad_(True)
                out, acts = runner._plain(i, leaf, need[i])
            return leaf, out, acts

        done = runner._map(run, range(len(sizes)), x.split(sizes))
        ctx.done, ctx.runner, ctx.need, ctx.names = done, runner, need, names
        out = torch.cat([d[1].detach() for d in done])
        return (out, *(torch.cat([d[2][k].detach() for d in done if k in d[2]]) for k in names))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, None, None, None, None]:
        need, names = ctx.need, ctx.names
        g_out, *g_acts = grads
        cut_out = g_out.split([d[1].shape[0] for d in ctx.done]) if g_out is not None else None
        have = [i for i, k in enumerate(need) if k > 0]
        cut_acts = [dict(zip(have, g.split([need[i] for i in have]), strict=True)) if g is not None else {}
                    for g in g_acts]

        def back(i: int) -> torch.Tensor:
            leaf, out, acts = ctx.done[i]
            pairs = [(out, cut_out[i])] if cut_out is not None else []
            pairs += [(acts[k], c[i]) for k, c in zip(names, cut_acts, strict=True) if i in c]
            pairs = [(o, g) for o, g in pairs if o.requires_grad]
            if not pairs:
                return torch.zeros_like(leaf)
            (gx,) = torch.autograd.grad([o for o, _ in pairs], [leaf], [g for _, g in pairs],
                                        allow_unused=True)
            return torch.zeros_like(leaf) if gx is None else gx

        gx = torch.cat(ctx.runner._map(back, range(len(need))))
        ctx.done = None
        return gx, None, None, None, None
