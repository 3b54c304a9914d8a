"""A probe around an ActivationStore for the out-of-core tests: it records every read, so a test can say
how many rows a fit held at once and that it never read the store whole (importable as ``store_probe``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from conceptlens.io.store import ActivationStore


class ProbeStore:
    """The store's ``iter_batches`` / ``read_rows`` / ``__len__`` / ``n_channels``, with every read logged.

    ``reads``: ``("batches", rows)`` per ``iter_batches`` call and ``("block", start, stop)`` per
    ``read_rows``; ``largest``: the most rows one returned tensor held.
    """

    def __init__(self, store: ActivationStore) -> None:
        self.store = store
        self.reads: list[tuple[object, ...]] = []
        self.largest = 0

    def __len__(self) -> int:
        return len(self.store)

    @property
    def n_channels(self) -> int | None:
        return self.store.n_channels

    def iter_batches(self, rows: int) -> Iterator[torch.Tensor]:
        self.reads.append(("batches", rows))
        for b in self.store.iter_batches(rows):
            self.largest = max(self.largest, int(b.shape[0]))
            yield b

    def read_rows(self, start: int, stop: int) -> torch.Tensor:
        self.reads.append(("block", start, stop))
        self.largest = max(self.largest, stop - start)
        return self.store.read_rows(start, stop)

    def read_all(self) -> torch.Tensor:  # pragma: no cover - a fit that calls it fails the test
        raise AssertionError("an out-of-core fit read the whole store")


def store_of(A: torch.Tensor, path: str, images_per_shard: int) -> ProbeStore:
    """``A [N, *S, C]`` written image-major into a new store at ``path``, ``images_per_shard`` per shard."""
    store = ActivationStore(path)
    for a in A.split(images_per_shard):
        store.append(a)
    return ProbeStore(store)
