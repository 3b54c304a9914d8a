"""report.table: one column spec, four renderings that agree on every number and on the best value."""

from __future__ import annotations

import csv
import io
import math

from conceptlens.report.table import Column, Table

COLS = [Column("method", "method", kind="str"), Column("fid_c", "Fid_c", kind="pct", digits=0, better="max",
                                                         html="Fid<sub>c</sub>"),
        Column("fid_r", "Fid_r", better="min")]
ROWS = [{"method": "nmf", "fid_c": 0.9, "fid_r": -0.25}, {"method": "pca", "fid_c": 1.0, "fid_r": math.nan},
        {"method": "kmeans", "fid_c": None, "fid_r": 0.1}]


def test_best_ignores_missing_values_and_follows_the_direction() -> None:
    t = Table(COLS, ROWS)
    assert t.best() == {"fid_c": 1, "fid_r": 0}
    assert Table(COLS, ROWS, best_of=[0, 2]).best() == {"fid_c": 0, "fid_r": 0}


def test_markdown_marks_the_best_and_shows_gaps() -> None:
    md = Table(COLS, ROWS).markdown().splitlines()
    assert md[0] == "| method | Fid_c | Fid_r |" and md[1] == "|---|---|---|"
    assert md[2] == "| nmf | 90\u00a0% | **-0.250** |"
    assert md[3] == "| pca | **100\u00a0%** | – |"
    assert md[4] == "| kmeans | – | 0.100 |"


def test_csv_keeps_full_precision_and_the_keys() -> None:
    rows = list(csv.reader(io.StringIO(Table(COLS, ROWS).csv())))
    assert rows[0] == ["method", "fid_c", "fid_r"]
    assert rows[1] == ["nmf", "0.9", "-0.25"] and rows[3] == ["kmeans", "", "0.1"]


def test_html_and_terminal() -> None:
    h = Table(COLS, ROWS).html()
    assert "<th>Fid<sub>c</sub></th>" in h and '<strong class="best">−0.250</strong>' in h
    assert h.count('class="best"') == 2
    term = Table(COLS, ROWS).terminal().splitlines()
    assert len({len(line) for line in term[:2]}) == 1  # right-aligned numbers: the same width
    assert term[1].startswith("nmf ") and term[1].endswith("-0.250")


def test_ties_are_all_marked() -> None:
    rows = [{"method": "a", "fid_c": 1.0, "fid_r": 0.2}, {"method": "b", "fid_c": 1.0, "fid_r": 0.3}]
    t = Table(COLS, rows)
    assert t.best_rows() == {"fid_c": {0, 1}, "fid_r": {0}} and t.best() == {"fid_c": 0, "fid_r": 0}
    assert t.html().count('class="best"') == 3 and t.markdown().count("**") == 6
