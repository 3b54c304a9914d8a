"""The house keeps its shape: layers one way (import-linter), no import cycle, no module over 600 lines.

The layers are declared once, in pyproject.toml's ``[tool.importlinter]`` (DESIGN.md draws them); lazy
imports inside functions count like any other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "conceptlens"
MAX_LINES = 600


def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.is_file():
        if os.environ.get("CI"):
            pytest.fail("import-linter is not installed (a dev dependency: pip install -e '.[dev]')")
        pytest.skip("import-linter is not installed")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_layers_contract_holds() -> None:
    res = _lint_imports(ROOT, ROOT / "src")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_layers_contract_catches_an_upward_import(tmp_path: Path) -> None:
    # the same package with one import that runs up against the flow (a metric reaching for the report)
    shutil.copytree(SRC, tmp_path / "src" / "conceptlens", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    victim = tmp_path / "src" / "conceptlens" / "metrics" / "ice.py"
    upward = "\n\ndef _up() -> None:\n    from conceptlens.report import html  # noqa\n"
    victim.write_text(victim.read_text() + upward)
    res = _lint_imports(tmp_path, tmp_path / "src")
    assert res.returncode != 0
    assert "conceptlens.metrics.ice -> conceptlens.report.html" in res.stdout


def _graph():  # noqa: ANN202 - grimp's graph type
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph("conceptlens", cache_dir=None)


def test_no_import_cycle() -> None:
    graph = _graph()
    mods = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in mods}
    # a package's __init__ re-exporting its own children is not a cycle of the code; anything else is
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan, recursive (the graph has ~80 nodes)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for m in mods:
        if m not in index:
            visit(m)
    assert sccs == [], f"import cycles: {sccs}"


def test_no_module_over_600_lines() -> None:
    big = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines (split them by responsibility): {big}"
