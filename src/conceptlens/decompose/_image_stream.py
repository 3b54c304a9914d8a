"""Activation rows of whole images, from a tensor or an on-disk store, read the same way from either.

Notation (as in :mod:`conceptlens.decompose.base`): ``A [N, *S, C]`` activations of ``N`` images (``S``
the spatial shape, ``P = |S|`` rows per image, ``S = ()`` when each image is one row); its rows
``[n, C]``, ``n = N·P``, image-major (image ``i`` owns rows ``[i·P, (i+1)·P)``). A store
(:class:`~conceptlens.io.store.ActivationStore`, or any object with ``iter_batches(rows)`` and
``__len__``) holds those rows and nothing else, so the image shape travels beside it.

The out-of-core fits (FACE's mini-batch passes, EDDP's mini-batch steps) read their data only through
:class:`RowSource`, which reads a tensor in exactly the chunks, blocks and image batches in which it reads
a store: the same rows, in the same order and grouping, so a fit gives the same result from either (up to
nothing: the arithmetic is the same). Memory is one chunk, block or batch at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from conceptlens.decompose.base import as_rows
from conceptlens.errors import ActivationError, ParameterError

__all__ = ["RowSource", "row_chunks", "n_rows"]


class RowSource:
    """The rows of a tensor ``A [N, *S, C]`` or of a store of ``N·|S|`` image-major rows.

    Parameters
    ----------
    A : Tensor ``[N, *S, C]`` or ``[n, C]``, or a store
        The activations.
    image_shape : tuple of int, optional
        ``S``. For a tensor, ``A.shape[1:-1]`` when None (a tensor of rows with ``image_shape`` given is
        regrouped into images); for a store, ``()`` (each row its own image) when None.

    Attributes
    ----------
    n_rows, n_images, per_image : int
        ``n``, ``N``, ``P``.
    image_shape : tuple of int
        ``S``.
    n_channels : int
        ``C``.
    """

    def __init__(self, A: Any, image_shape: tuple[int, ...] | None = None) -> None:
        self.tensor: torch.Tensor | None = None
        self.store: Any = None
        self.first: torch.Tensor | None = None  # a store's first row [1, C]
        if isinstance(A, torch.Tensor):
            rows, _ = as_rows(A)
            self.tensor = rows
            shape = tuple(A.shape[1:-1]) if image_shape is None else tuple(image_shape)
            if image_shape is not None and A.ndim > 2 and tuple(A.shape[1:-1]) != shape:
                raise ActivationError(f"image_shape={list(shape)} does not match the activations' "
                                      f"{list(A.shape)}; leave it out for [N, *S, C] tensors")
            self.n_rows, self.n_channels = int(rows.shape[0]), int(rows.shape[1])
        elif hasattr(A, "iter_batches"):
            self.store = A
            shape = () if image_shape is None else tuple(image_shape)
            self.n_rows = len(A)
            # the first row: the store's dtype and channels (one shard read, then the generator is closed)
            batches = A.iter_batches(1)
            self.first = next(iter(batches), None)
            getattr(batches, "close", lambda: None)()
            self.n_channels = 0 if self.first is None else int(self.first.shape[-1])
        else:
            raise ActivationError(f"activations must be a tensor [N, *S, C] or an ActivationStore, got "
                                  f"{type(A).__name__}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ParameterError(f"image_shape must be positive integers (the spatial shape h, w), got "
                                 f"{list(shape)}")
        self.image_shape = shape
        self.per_image = math.prod(shape)
        if self.n_rows == 0:
            raise ActivationError("no activation rows to fit on (the input is empty)")
        if self.n_rows % self.per_image:
            raise ActivationError(f"{self.n_rows} activation rows are not whole images of {list(shape)} "
                                  f"positions; give the image_shape the activations were extracted with")
        self.n_images = self.n_rows // self.per_image

    @property
    def dtype(self) -> torch.dtype:
        """The rows' dtype (a store's is read from its first rows)."""
        if self.tensor is not None:
            return self.tensor.dtype
        return self.first.dtype  # type: ignore[union-attr]  # a RowSource is never empty

    @property
    def device(self) -> torch.device:
        """Where the rows live (a store reads into CPU memory)."""
        return self.tensor.device if self.tensor is not None else torch.device("cpu")

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """The rows in order, ``[≤ rows, C]`` at a time (exactly ``rows`` but the last)."""
        if self.tensor is not None:
            yield from self.tensor.split(rows)
            return
        for b in self.store.iter_batches(rows):
            if not isinstance(b, torch.Tensor) or b.ndim != 2 or b.shape[1] != self.n_channels:
                raise ActivationError(f"a store's iter_batches must yield [rows, {self.n_channels}] tensors")
            yield b

    def images(self, per_batch: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(i, A_b)``: the first image's index and ``A_b [≤ per_batch, *S, C]``, in order."""
        i = 0
        for r in self.chunks(per_batch * self.per_image):
            a = r.reshape(-1, *self.image_shape, self.n_channels)
            yield i, a
            i += int(a.shape[0])

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` ``[stop − start, C]`` (a view of a tensor; read from a store's shards)."""
        if self.tensor is not None:
            return self.tensor[start:stop]
        if hasattr(self.store, "read_rows"):
            return self.store.read_rows(start, stop)
        parts, at = [], 0  # a store without random access: read up to the block
        for b in self.chunks(max(stop - start, 1)):
            lo, hi = max(start - at, 0), min(stop - at, b.shape[0])
            if hi > lo:
                parts.append(b[lo:hi])
            at += int(b.shape[0])
            if at >= stop:
                break
        return torch.cat(parts)

    def gather(self, idx: torch.Tensor, chunk: int) -> torch.Tensor:
        """Rows ``idx [m]`` ``[m, C]`` in the order of ``idx`` (one pass over a store, ``chunk`` rows at a
        time; memory ``O(m·C + chunk·C)``)."""
        if self.tensor is not None:
            return self.tensor[idx.to(self.tensor.device)]
        idx = idx.cpu()
        order = torch.argsort(idx)
        srt = idx[order]
        out: torch.Tensor | None = None
        at, j = 0, 0
        for b in self.chunks(chunk):
            hi = int(torch.searchsorted(srt, at + b.shape[0]))
            if hi > j:
                if out is None:
                    out = b.new_empty((idx.shape[0], b.shape[1]))
                out[order[j:hi]] = b[srt[j:hi] - at]
                j = hi
            at += int(b.shape[0])
        if out is None or j != idx.shape[0]:
            raise ActivationError("the store holds fewer rows than it says; extract the activations again")
        return out


def row_chunks(rows: torch.Tensor | RowSource, size: int) -> Iterator[torch.Tensor]:
    """``[≤ size, C]`` chunks, in order, of rows in memory ``[n, C]`` or of a :class:`RowSource`."""
    if isinstance(rows, RowSource):
        yield from rows.chunks(size)
    else:
        yield from rows.split(size)


def n_rows(rows: torch.Tensor | RowSource) -> int:
    """``n``, the number of rows of a tensor ``[n, C]`` or a :class:`RowSource`."""
    return rows.n_rows if isinstance(rows, RowSource) else int(rows.shape[0])
