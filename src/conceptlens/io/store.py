"""An on-disk activation store: activation rows in sharded safetensors files, for data larger than memory.

Notation: ``A [n, C]`` activation rows (one per spatial position or image), channels last; a store holds
``n = len(store)`` rows of ``C = store.n_channels`` channels in shards of ``[n_s, C]``.

Layout of a store directory::

    index.json                   {"format": 1, "n_channels": C, "dtype": "float32",
                                  "shards": [{"file": "shard-000000.safetensors", "rows": n_0}, ...]}
    shard-000000.safetensors     one tensor "A" [n_0, C]
    ...

Crash safety: a shard is written to a temporary file, flushed, fsynced and renamed into place
(``os.replace``, atomic on POSIX and Windows), and only then is the index (written the same way)
updated to list it. Readers read only the shards the index lists, so an interrupted write — at any
point — leaves the store as it was before that append: a half-written shard is never read.

Typical use::

    store = ActivationStore.from_split(split, images, "acts/", batch_size=64)
    bank = NMF(25, batch_size=8192).fit(store)          # streamed, memory O(batch + k·C)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from conceptlens._io import atomic_write
from conceptlens.errors import ActivationError, ParameterError

__all__ = ["ActivationStore"]

_FORMAT = 1
_INDEX = "index.json"


class ActivationStore:
    """Activation rows on disk in safetensors shards, appended atomically and read batch by batch.

    Parameters
    ----------
    path : str or PathLike
        The store's directory; created (empty) when it does not exist, opened when it holds an index.

    Examples
    --------
    >>> store = ActivationStore("/tmp/acts")
    >>> store.append(A)                       # A [..., C]: rows are A.reshape(-1, C)
    >>> for batch in store.iter_batches(4096):  # [≤ 4096, C]
    ...     ...
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ParameterError(f"activation store path {str(self.path)!r} is a file; give a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        idx = self.path / _INDEX
        if idx.exists():
            try:
                meta = json.loads(idx.read_text())
            except (OSError, ValueError) as e:
                raise ActivationError(
                    f"the store index {str(idx)!r} cannot be read ({e}); the store is damaged — delete the "
                    "directory and extract the activations again"
                ) from e
            if meta.get("format") != _FORMAT:
                raise ActivationError(
                    f"store {str(self.path)!r} has format {meta.get('format')!r}, this version reads "
                    f"format {_FORMAT}; extract the activations again"
                )
            self._meta: dict[str, Any] = meta
        else:
            self._meta = {"format": _FORMAT, "n_channels": None, "dtype": None, "shards": []}

    # -- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of rows ``n`` in the store."""
        return sum(int(s["rows"]) for s in self._meta["shards"])

    @property
    def n_channels(self) -> int | None:
        """``C``, the number of channels (``None`` while the store is empty)."""
        return self._meta["n_channels"]

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The committed shards, in order: ``[{"file": name, "rows": n_s}, ...]``."""
        return [dict(s) for s in self._meta["shards"]]

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, rows={len(self)}, C={self.n_channels}, "
                f"shards={len(self._meta['shards'])})")

    def _load_shard(self, entry: dict[str, Any]) -> torch.Tensor:
        from safetensors.torch import load_file

        f = self.path / entry["file"]
        try:
            A = load_file(str(f))["A"]
        except Exception as e:
            raise ActivationError(
                f"shard {str(f)!r} listed in the store index cannot be read ({e}); the file was changed "
                "or removed after it was written — extract the activations again"
            ) from e
        if A.shape != (int(entry["rows"]), self.n_channels):
            raise ActivationError(
                f"shard {str(f)!r} holds {tuple(A.shape)} but the index says "
                f"({entry['rows']}, {self.n_channels}); extract the activations again"
            )
        return A

    def iter_batches(self, batch_rows: int) -> Iterator[torch.Tensor]:
        """Rows in order, in batches of exactly ``batch_rows`` (the last may be shorter), across shards.

        Parameters
        ----------
        batch_rows : int
            Rows per batch. Memory is one shard plus one batch.

        Yields
        ------
        Tensor ``[b, C]``
            ``b = batch_rows`` except for the last batch.
        """
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ParameterError(f"batch_rows must be a positive integer, got {batch_rows!r}")
        pending: list[torch.Tensor] = []
        have = 0
        for entry in self._meta["shards"]:
            A = self._load_shard(entry)
            start = 0
            while start < A.shape[0]:
                take = min(batch_rows - have, A.shape[0] - start)
                pending.append(A[start : start + take])
                have += take
                start += take
                if have == batch_rows:
                    yield pending[0] if len(pending) == 1 else torch.cat(pending)
                    pending, have = [], 0
        if have:
            yield pending[0] if len(pending) == 1 else torch.cat(pending)

    def read_all(self) -> torch.Tensor:
        """All rows in memory, ``[n, C]`` (only for stores that fit in memory)."""
        if not self._meta["shards"]:
            raise ActivationError(f"the store {str(self.path)!r} is empty; append activations first")
        return torch.cat([self._load_shard(e) for e in self._meta["shards"]])

    # -- writing ----------------------------------------------------------------------------------
    def append(self, A: torch.Tensor) -> None:
        """Append the rows of ``A [..., C]`` as one new shard (atomic: all of it or nothing).

        Parameters
        ----------
        A : Tensor ``[..., C]``
            Activations, channels last; stored as ``A.reshape(-1, C)`` in ``A``'s float dtype.
        """
        from safetensors.torch import save

        if not isinstance(A, torch.Tensor) or A.ndim < 1:
            raise ActivationError("append needs a tensor of activations [..., C] (channels last)")
        rows = A.detach().reshape(-1, A.shape[-1]).to("cpu").contiguous()
        if not rows.is_floating_point():
            rows = rows.float()
        C, dt = self._meta["n_channels"], self._meta["dtype"]
        if C is not None and rows.shape[1] != C:
            raise ActivationError(
                f"activations have {rows.shape[1]} channels but the store holds {C}; one store holds one "
                "layer — use another directory for another layer"
            )
        if dt is not None and str(rows.dtype) != dt:
            rows = rows.to(getattr(torch, dt.removeprefix("torch.")))
        if rows.shape[0] == 0:
            return
        name = f"shard-{len(self._meta['shards']):06d}.safetensors"
        # 1) the shard, atomically; 2) the index that makes it visible, atomically.
        atomic_write(self.path / name, save({"A": rows}))
        meta = {
            **self._meta,
            "n_channels": int(rows.shape[1]),
            "dtype": str(rows.dtype),
            "shards": [*self._meta["shards"], {"file": name, "rows": int(rows.shape[0])}],
        }
        atomic_write(self.path / _INDEX, (json.dumps(meta, indent=1) + "\n").encode())
        self._meta = meta

    @classmethod
    def from_split(
        cls,
        split: Any,
        images: torch.Tensor | Iterable[torch.Tensor],
        path: str | os.PathLike[str],
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> ActivationStore:
        """Stream activations ``split.g(x)`` of images into a new (or appended-to) store, batch by batch.

        Parameters
        ----------
        split : ModelSplit
            The model split whose ``g`` gives the activations (channels last).
        images : Tensor ``[N, 3, H, W]`` or iterable of such tensors
            Normalised images; an iterable (e.g. a DataLoader yielding image batches, or
            ``(images, labels)`` tuples) is consumed lazily, so ``N`` may exceed memory.
        path : str or PathLike
            The store directory.
        batch_size : int
            Images per forward pass and per shard when ``images`` is a tensor.
        progress : bool or None
            Progress bar (``None``: on a terminal only).

        Returns
        -------
        ActivationStore
            The store, one shard per batch of images.
        """
        from conceptlens.progress import progress_bar

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        store = cls(path)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise ParameterError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
            batches: Iterable[Any] = images.split(batch_size)
            total: int | None = -(-images.shape[0] // batch_size)
        else:
            batches, total = images, (len(images) if hasattr(images, "__len__") else None)  # type: ignore[arg-type]
        for xb in progress_bar(batches, "extracting activations", enable=progress, total=total):
            if isinstance(xb, (tuple, list)):
                xb = xb[0]  # (images, labels) from a DataLoader
            with torch.no_grad():
                store.append(split.g(xb, progress=False))
        return store
