"""A clean install: the wheel and the sdist build, pass `twine check`, and hold every file the package needs
(package data included); the licence is an SPDX expression; `conceptlens --version` answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "conceptlens"
pytest.importorskip("build")
pytest.importorskip("twine")


def _package_files() -> set[str]:
    """Every file of the package as the wheel should hold it (``conceptlens/...``), caches left out."""
    return {p.relative_to(SRC.parent).as_posix() for p in SRC.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """Build from a copy of the tree (no build/ or egg-info in the checkout, no race with other builds)."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "deprecat" not in (res.stdout + res.stderr).lower(), "the build warns about a deprecated setting"
    return out


def test_wheel_and_sdist_pass_twine_check(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files if f.suffix in {".whl", ".gz"}) == [".gz", ".whl"]
    res = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("PASSED") == 2


def test_the_wheel_holds_every_package_file(dist: Path) -> None:
    wheel = zipfile.ZipFile(next(dist.glob("*.whl")))
    names = set(wheel.namelist())
    expected = _package_files()
    assert "conceptlens/report/templates/index.html" in expected and "conceptlens/py.typed" in expected
    missing = expected - names  # a data file not matched by [tool.setuptools.package-data]
    assert missing == set(), f"package files missing from the wheel: {sorted(missing)}"
    meta = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for extra in ("timm", "hf", "bench", "docs", "dev"):
        assert f"Provides-Extra: {extra}" in meta
    entry = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "conceptlens = conceptlens.cli:main" in entry


def test_the_sdist_holds_the_sources_and_the_licence(dist: Path) -> None:
    with tarfile.open(next(dist.glob("*.tar.gz"))) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= names
    assert {f"src/{f}" for f in _package_files()} - names == set()


def test_pyproject_licence_and_extras() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["license"] == "MIT"                   # an SPDX expression, not the old table
    assert meta["project"]["license-files"] == ["LICENSE"]
    (setuptools,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools.replace(" ", "") >= "setuptools>=77"       # PEP 639 support
    extras = meta["project"]["optional-dependencies"]
    assert any(r.startswith("scikit-learn") for r in extras["bench"])
    assert any(r.startswith("mkdocs") for r in extras["docs"])
    assert any("bench" in r and "docs" in r for r in extras["dev"] if r.startswith("conceptlens["))


def test_version_option() -> None:
    from typer.testing import CliRunner

    from conceptlens import __version__
    from conceptlens.cli import app

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"conceptlens {__version__}"
