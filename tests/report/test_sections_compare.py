"""conceptlens.report.sections.compare on plain rows: ties all marked, errors spanning the row, the one column
spec's formats, and the terminal table's fixed layout."""

from __future__ import annotations

import math

from conceptlens.report.sections.compare import best_values, summary_section, terminal_table
from conceptlens.report.table import Column

COLS = (Column("fid_c", "Fid_c", kind="pct", digits=0, better="max", html="Fid<sub>c</sub>"),
        Column("fid_r", "Fid_r", better="min"),
        Column("stability", "stability", better="max"))
NAN = float("nan")
ROWS = [
    {"method": "a", "fid_c": 0.9, "fid_r": 0.25, "stability": NAN, "error": ""},
    {"method": "b", "fid_c": 0.9, "fid_r": 0.125, "stability": NAN, "error": ""},
    {"method": "c", "fid_c": 1.0, "fid_r": 0.0, "stability": NAN, "error": "RuntimeError: <boom>"},
]


def test_best_values_ignore_error_rows_and_nan() -> None:
    assert best_values(ROWS, COLS) == {"fid_c": 0.9, "fid_r": 0.125}


def test_summary_marks_every_tie_and_spans_errors() -> None:
    s = summary_section(ROWS, COLS, ["one <reading>"], {"b": "b/index.html"}, label=str.upper)
    assert s.anchor == "compare" and s.title == "Comparison of methods"
    # fid_c ties between a and b (both bold), fid_r's best is b; the all-NaN column is left out
    assert s.html.count('class="best"') == 3
    assert "stability" not in s.html and "Fid<sub>c</sub>&nbsp;↑" in s.html and "Fid_r&nbsp;↓" in s.html
    assert '<a href="b/index.html">B</a>' in s.html and '<th scope="row">A</th>' in s.html
    assert '<td class="error" colspan="2">failed: RuntimeError: &lt;boom&gt;</td>' in s.html
    assert "<li>one &lt;reading&gt;</li>" in s.html
    assert "<td>90\u00a0%</td>" not in s.html and "<strong>90\u00a0%</strong>" in s.html
    assert "<td>0.250</td>" in s.html


def test_terminal_table_layout() -> None:
    text = terminal_table(ROWS, COLS[:2])
    lines = text.splitlines()
    assert lines[0] == f"{'method':<8}{'fid_c':>14}{'fid_r':>14}"
    assert lines[1] == f"{'a':<8}{0.9:>14.4f}{0.25:>14.4f}"
    assert lines[3] == "c         failed: RuntimeError: <boom>"
    nan_row = terminal_table([{"method": "m", "fid_c": NAN, "error": ""}], COLS[:1]).splitlines()[1]
    assert nan_row.split() == ["m", "nan"] and math.isnan(float(nan_row.split()[1]))
