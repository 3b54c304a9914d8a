"""examples/quickstart.py runs, cell by cell as a notebook would, and each cell's result displays."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"


def _cells(path: Path) -> list[str]:
    """The code cells of a percent-format script (``# %%`` separators, markdown cells dropped)."""
    parts = re.split(r"(?m)^# %%", path.read_text(encoding="utf-8"))
    return [p.split("\n", 1)[1] for p in parts[1:] if not p.startswith(" [markdown]")]  # minus the title


def _run_like_a_notebook(cells: list[str], cwd: Path) -> list[object]:
    """Run each cell in one namespace; return the value of each cell's last expression (None if none)."""
    ns: dict[str, object] = {"__name__": "__main__"}
    shown: list[object] = []
    old = Path.cwd()
    os.chdir(cwd)
    try:
        for code in cells:
            tree = ast.parse(code)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<cell>", "exec"), ns)  # noqa: S102 - the repository's own example
            shown.append(eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns) if last else None)  # noqa: S307
    finally:
        os.chdir(old)
    return shown


def test_quickstart_is_a_short_percent_format_script():
    cells = _cells(QUICKSTART)
    assert len(cells) >= 5
    code = [ln for c in cells for ln in c.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(code) <= 20  # about ten lines of real use


@pytest.mark.slow
def test_quickstart_runs_and_every_result_displays(tmp_path, capsys):
    shown = _run_like_a_notebook(_cells(QUICKSTART), tmp_path)
    out = capsys.readouterr().out
    assert "fid_c" in out
    ex, e = shown[1], shown[2]
    card = ex._repr_html_()
    assert card.count("data:image/png;base64,") == 5 and "Egyptian cat" in card
    assert e._repr_html_().count('class="image"') == 2
    edit = shown[4]
    assert "<td" in edit._repr_html_() and bool((edit.delta_target != 0).all())
    assert tuple(shown[5]) == (2, 5, 7, 7)
    for name in ("concepts.png", "contributions.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 100 and im.height > 100
