"""The one way conceptlens writes files: atomically, durably, readable by others.

Every file the library writes (saved explainers, activation-store shards and indexes, PNGs, reports, JSON
and CSV results, the world CNN's cache) goes through :func:`atomic_write`: the bytes go to a temp file
beside the target, are flushed and fsynced, get mode ``0644`` (less the umask; ``mkstemp`` creates
``0600``, but these files are meant to be shared), and replace the target with one ``os.replace``. A
reader sees the old file or the whole new one, never a torn write; an interrupted write leaves at most a
``.<name>.*.tmp`` file and never loses the old one. A file that cannot be written (the path is a
directory, lies under a file, is not writable, the disk is full) gives one :class:`OutputError` naming it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from conceptlens.errors import OutputError, ParameterError

__all__ = ["atomic_write", "atomic_write_with", "write_json", "write_csv", "json_safe", "sha256_bytes",
           "file_mode", "splice"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of every file conceptlens writes: ``0644`` less the process umask."""
    return 0o644 & ~_umask()


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path`` (binary), then fsync it and rename it over ``path``.

    Parameters
    ----------
    path
        The target file; its folder is created when missing.
    write
        Writes the content to the open binary file it is given.

    Returns
    -------
    Path
        ``path``.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as exc:
        raise _output_error(p, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _output_error(p, exc) from exc
        raise
    return p


def _output_error(p: Path, exc: OSError) -> OutputError:
    """One clear error naming the path (an :class:`OSError` too, for callers that catch those)."""
    if p.is_dir():
        why = "it is a directory; give a file path"
    elif any(q.exists() and not q.is_dir() for q in p.parents):
        why = "a parent of it is a file, not a directory"
    else:
        why = f"{exc.strerror or exc}; choose a writable place"
    err = OutputError(f"cannot write {str(p)!r}: {why} ({type(exc).__name__}: {exc})")
    err.errno = exc.errno
    return err


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see the module docstring)."""
    raw = data.encode() if isinstance(data, str) else data
    return atomic_write_with(path, lambda f: f.write(raw))


def json_safe(v: Any) -> Any:
    """``v`` with non-finite floats as None, tuples as lists, numpy / torch scalars as Python numbers."""
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 1) -> Path:
    """Write ``payload`` as JSON (non-finite numbers as ``null``) atomically, ending with a newline."""
    return atomic_write(path, json.dumps(json_safe(payload), indent=indent) + "\n")


def write_csv(path: str | os.PathLike[str], columns: Sequence[str],
              rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts; missing keys empty) under the header ``columns`` atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(dict(r))
    return atomic_write(path, buf.getvalue())


def sha256_bytes(*chunks: bytes) -> str:
    """Hex SHA-256 of the concatenated ``chunks`` (detects corruption, not forgery: it is not keyed)."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def splice(path: str | os.PathLike[str], markers: tuple[str, str], block: str) -> Path:
    """Put ``block`` between the ``markers`` lines of the text file ``path`` (atomically): how commands
    write their tables into a README. ParameterError when the markers are missing."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    start, end = markers
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ParameterError(f"{str(p)!r} has no markers ({start!r} … {end!r}); add them where the block "
                             "belongs")
    return atomic_write(p, text[: i + len(start)] + "\n" + block + text[j:])
