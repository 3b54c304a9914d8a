"""Progress bars for long work: tqdm on a terminal, silent otherwise (CI, pipes, ``progress=False``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

__all__ = ["progress_bar", "enabled"]


def enabled(flag: bool | None) -> bool:
    """Resolve a ``progress`` argument: None means "only on an interactive terminal, never in CI"."""
    if flag is not None:
        return bool(flag)
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(
    items: Iterable[T],
    desc: str = "",
    *,
    enable: bool | None = None,
    total: int | None = None,
    min_items: int = 1,
) -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar when :func:`enabled`; no bar for fewer than ``min_items``."""
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    if not enabled(enable) or (n is not None and n < min_items):
        yield from items
        return
    yield from tqdm(items, desc=desc, total=n, leave=False)
