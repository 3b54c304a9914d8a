"""The code stays ruff-clean (the rules in pyproject.toml): a lint failure fails the tests, in CI too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    exe = str(ruff) if ruff.is_file() else shutil.which("ruff")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is not installed (it is a dev dependency: pip install -e '.[dev]')")
        pytest.skip("ruff is not installed")
    res = subprocess.run([exe, "check", "src", "tests"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
