"""bench summary: one row per headline, read from each benchmark's JSON; nothing typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from conceptlens.bench import summary


def _write(folder: Path, name: str, payload: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(payload))


def test_summary_reads_headlines_and_older_layouts(tmp_path: Path) -> None:
    head = [{"what": "Sobol over bare h", "value": "+12 %", "target": "≤ +20 %", "met": True}]
    _write(tmp_path, "sobol", {"benchmark": "sobol", "env": {"loadavg": [1.25, 1.0, 1.0], "threads": 2},
                               "headline": head})
    _write(tmp_path, "nmf", {"benchmark": "nmf", "env": {"threads": 2}, "threads_used": 1,
                             "load_average": {"before": [3.5]},
                             "rows": [{"k": 25, "density": 0.1, "speedup_to_1pct_vs_cd": 13.64,
                                       "speedup_default_vs_cd": 8.3}],
                             "encode": {"rows": 100000, "speedup": 9.96},
                             "two_threads": {"encode": {"rows": 100000, "speedup": 10.5}}})
    (tmp_path / "broken.json").write_text("{not json")
    rows = summary.headlines(tmp_path)
    by = {(r["benchmark"], r["what"][:10]): r for r in rows}
    assert [r["benchmark"] for r in rows] == ["broken", "nmf", "nmf", "nmf", "nmf", "sobol"]
    assert by[("broken", "(unreadabl")]["value"] == "JSONDecodeError"
    enc, enc2 = (r for r in rows if "encode" in r["what"])
    assert enc["value"] == "9.96×" and enc["met"] is False and enc["load"] == 3.5 and enc["threads"] == 1
    assert enc2["value"] == "10.5×" and enc2["met"] is True and enc2["threads"] == 2  # its own thread count
    to1 = next(r for r in rows if "1 %" in r["what"])
    assert to1["value"] == "13.6×" and to1["met"] is None
    table = summary.summary_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "| sobol | Sobol over bare h | +12 % | ≤ +20 % | ✓ | 1.2 | 2 |" in lines  # 1.25 → 1.2 (half-even)
    assert any(line.startswith("| nmf | NMF encode") and "| ✗ |" in line for line in lines)
    path = summary.write_summary(tmp_path)
    assert path.read_text() == table


def test_committed_summary_matches_the_committed_results() -> None:
    folder = Path(__file__).resolve().parents[2] / "bench" / "results"
    if not (folder / "summary.md").exists():
        raise AssertionError("bench/results/summary.md is missing: run `conceptlens bench summary`")
    assert (folder / "summary.md").read_text() == summary.summary_table(summary.headlines(folder))
