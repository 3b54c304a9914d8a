"""conceptlens._io: the one atomic write (mode, durability of the old file, cleanup) and its writers."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch

from conceptlens._io import atomic_write, atomic_write_with, json_safe, write_csv, write_json


def test_atomic_write_creates_folders_and_a_shared_mode(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "a" / "b.bin", b"xyz")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"xyz"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # mkstemp's 0600 would hide a shared report
    assert [f.name for f in p.parent.iterdir()] == ["b.bin"]  # no temp file left behind


def test_atomic_write_respects_a_stricter_umask(tmp_path) -> None:
    old = os.umask(0o077)
    try:
        p = atomic_write(tmp_path / "x.txt", "text")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.read_text() == "text"


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    p = atomic_write(tmp_path / "keep.txt", b"old")

    def boom(f) -> None:
        f.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write_with(p, boom)
    assert p.read_bytes() == b"old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["keep.txt"]


def test_json_safe_and_write_json(tmp_path) -> None:
    payload = {"a": float("nan"), "b": (1, 2.5), "c": torch.tensor(3.0), "d": {"e": math.inf}}
    assert json_safe(payload) == {"a": None, "b": [1, 2.5], "c": 3.0, "d": {"e": None}}
    p = write_json(tmp_path / "r.json", payload)
    assert json.loads(p.read_text()) == {"a": None, "b": [1, 2.5], "c": 3.0, "d": {"e": None}}
    assert p.read_text().endswith("\n")


def test_write_csv_keeps_the_column_order_and_leaves_missing_cells_empty(tmp_path) -> None:
    p = write_csv(tmp_path / "t.csv", ["m", "x", "y"], [{"m": "nmf", "x": 0.5, "extra": 1}, {"y": 2}])
    assert p.read_text().splitlines() == ["m,x,y", "nmf,0.5,", ",,2"]


@pytest.mark.parametrize("where", ["a directory", "under a file", "an unwritable place"])
def test_unwritable_targets_give_one_clear_error_naming_the_path(tmp_path, where) -> None:
    from conceptlens.errors import ConceptLensError, OutputError

    (tmp_path / "file").write_text("x")
    # /proc refuses new folders even to root (mode bits would not stop a root CI run)
    target = {"a directory": tmp_path, "under a file": tmp_path / "file" / "out.json",
              "an unwritable place": Path("/proc/conceptlens-test/out.json")}[where]
    with pytest.raises(OutputError) as err:
        write_json(target, {"a": 1})
    assert isinstance(err.value, ConceptLensError) and isinstance(err.value, OSError)
    assert str(target) in str(err.value) and "cannot write" in str(err.value)
