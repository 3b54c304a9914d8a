"""An on-disk activation store: activation rows in sharded safetensors files, for data larger than memory.

Notation: ``A [n, C]`` activation rows (one per spatial position or image), channels last; a store holds
``n = len(store)`` rows of ``C = store.n_channels`` channels in shards of ``[n_s, C]``.

Layout of a store directory::

    index.json                   {"format": 2, "n_channels": C, "dtype": "float32",
                                  "shards": [{"file": "shard-000000.safetensors", "rows": n_0,
                                              "sha256": "…"}, ...]}
    shard-000000.safetensors     one tensor "A" [n_0, C]
    ...

Crash safety: a shard is written to a temporary file, flushed, fsynced and renamed into place
(``os.replace``, atomic on POSIX and Windows), and only then is the index (written the same way)
updated to list it. Readers read only the shards the index lists, so an interrupted write — at any
point — leaves the store as it was before that append: a half-written shard is never read. Opening a
store removes what interrupted writes left behind (``.*.tmp`` files and shard files the index does not
list) and says so in a warning.

Trust: the index is validated before use (a :class:`~conceptlens.errors.StoreError` otherwise); a shard
is only ever a ``shard-NNNNNN.safetensors`` file directly inside the store (an index cannot point
elsewhere), and its bytes are checked against the SHA-256 the index recorded when it was written (format
1 stores, written before checksums, are read unchecked).

Typical use::

    store = ActivationStore.from_split(split, images, "acts/", batch_size=64)
    bank = NMF(25, batch_size=8192).fit(store)          # streamed, memory O(batch + k·C)
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from conceptlens._io import atomic_write, sha256_bytes
from conceptlens.errors import ActivationError, ParameterError, StoreError

__all__ = ["ActivationStore"]

_FORMAT = 2
_READABLE = (1, 2)  # format 1: the same layout without per-shard checksums
_INDEX = "index.json"
_SHARD = re.compile(r"shard-\d{6}\.safetensors")
_DTYPES = ("torch.float16", "torch.bfloat16", "torch.float32", "torch.float64")


def _check_index(meta: Any, where: Path) -> dict[str, Any]:
    """``meta`` if it is a well-formed index, else a StoreError naming what is wrong."""

    def bad(what: str) -> StoreError:
        return StoreError(f"the store index {str(where)!r} is malformed ({what}); the store is damaged — "
                          "delete the directory and extract the activations again")

    if not isinstance(meta, dict):
        raise bad(f"a {type(meta).__name__}, not an object")
    if meta.get("format") not in _READABLE:
        raise StoreError(f"store {str(where.parent)!r} has format {meta.get('format')!r}, this version reads "
                         f"formats {_READABLE}; extract the activations again")
    shards, C, dt = meta.get("shards"), meta.get("n_channels"), meta.get("dtype")
    if not isinstance(shards, list):
        raise bad("no list of shards")
    if C is not None and (isinstance(C, bool) or not isinstance(C, int) or C < 1):
        raise bad(f"n_channels {C!r}")
    if dt is not None and dt not in _DTYPES:
        raise bad(f"dtype {dt!r}")
    if shards and (C is None or dt is None):
        raise bad("shards without n_channels or dtype")
    seen: set[str] = set()
    for e in shards:
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not _SHARD.fullmatch(e["file"]):
            raise bad(f"shard entry {e!r}: a shard is a 'shard-NNNNNN.safetensors' file inside the store")
        rows = e.get("rows")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise bad(f"shard {e['file']!r} has {rows!r} rows")
        digest = e.get("sha256")
        if meta["format"] >= 2 and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise bad(f"shard {e['file']!r} has no valid sha256")
        if e["file"] in seen:
            raise bad(f"shard {e['file']!r} listed twice")
        seen.add(e["file"])
    return meta


class ActivationStore:
    """Activation rows on disk in safetensors shards, appended atomically and read batch by batch.

    Parameters
    ----------
    path : str or PathLike
        The store's directory; created (empty) when it does not exist, opened when it holds an index.

    Examples
    --------
    >>> store = ActivationStore("acts/")
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
            except (OSError, ValueError, RecursionError) as e:
                raise StoreError(
                    f"the store index {str(idx)!r} cannot be read ({type(e).__name__}); the store is damaged "
                    "— delete the directory and extract the activations again"
                ) from e
            self._meta: dict[str, Any] = _check_index(meta, idx)
        else:
            self._meta = {"format": _FORMAT, "n_channels": None, "dtype": None, "shards": []}
        self._verified: set[str] = set()  # shards whose checksum this object has checked
        self._clean()

    def _clean(self) -> None:
        """Remove what interrupted writes left: ``.*.tmp`` files and shard files the index does not list."""
        listed = {e["file"] for e in self._meta["shards"]}
        left = [p for p in self.path.iterdir() if p.is_file() and (
            (p.name.startswith(".") and p.name.endswith(".tmp"))
            or (_SHARD.fullmatch(p.name) and p.name not in listed))]
        for p in left:
            p.unlink(missing_ok=True)
        if left:
            warnings.warn(f"activation store {str(self.path)!r}: removed {len(left)} file(s) left by an "
                          f"interrupted write ({', '.join(sorted(p.name for p in left)[:5])}"
                          f"{', …' if len(left) > 5 else ''}); the committed rows are intact", stacklevel=3)

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
        from safetensors.torch import load

        f = self.path / entry["file"]  # a bare shard name (checked with the index): inside the store
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise StoreError(f"shard {str(f)!r} listed in the store index cannot be read ({e}); it was "
                             "removed after it was written — extract the activations again") from e
        # each shard's checksum is checked on its first read by this object (an out-of-core fit reads every
        # shard once per pass: hashing them all again each pass cost about a third of a pass)
        if "sha256" in entry and entry["file"] not in self._verified and sha256_bytes(raw) != entry["sha256"]:
            raise StoreError(f"shard {str(f)!r} was changed after it was written (checksum mismatch); "
                             "extract the activations again")
        try:
            A = load(raw)["A"]
        except Exception as e:
            raise StoreError(
                f"shard {str(f)!r} listed in the store index cannot be read ({e}); the file was changed "
                "after it was written — extract the activations again"
            ) from e
        if A.shape != (int(entry["rows"]), self.n_channels):
            raise StoreError(
                f"shard {str(f)!r} holds {tuple(A.shape)} but the index says "
                f"({entry['rows']}, {self.n_channels}); extract the activations again"
            )
        self._verified.add(entry["file"])
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

    def read_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as one tensor ``[stop − start, C]``, reading only the shards they lie in
        (random access at shard granularity: EDDP's mini-batches visit blocks of rows in a seeded order)."""
        n = len(self)
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= n):
            raise ParameterError(f"read_rows needs 0 ≤ start ≤ stop ≤ {n} (the store's rows), got "
                                 f"[{start!r}, {stop!r})")
        parts, offset = [], 0
        for entry in self._meta["shards"]:
            end = offset + int(entry["rows"])
            if end > start and offset < stop:
                A = self._load_shard(entry)
                parts.append(A[max(start - offset, 0) : min(stop, end) - offset])
            offset = end
            if offset >= stop:
                break
        if not parts:
            return torch.empty(0, self.n_channels or 0)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

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
        # 1) the shard, atomically; 2) the index that makes it visible (with its checksum), atomically.
        raw = save({"A": rows})
        atomic_write(self.path / name, raw)
        entry = {"file": name, "rows": int(rows.shape[0]), "sha256": sha256_bytes(raw)}
        meta = {
            **self._meta,
            "format": self._meta["format"] if self._meta["shards"] else _FORMAT,
            "n_channels": int(rows.shape[1]),
            "dtype": str(rows.dtype),
            "shards": [*self._meta["shards"], entry],
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
