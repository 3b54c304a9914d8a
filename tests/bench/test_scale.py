"""bench scale: one fresh process per run, the stage times add up, the store is used above the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conceptlens.bench.scale import run_benchmark


@pytest.mark.slow
def test_scale_bench_writes_consistent_rows(tmp_path: Path) -> None:
    payload = run_benchmark(quick=True, out=tmp_path, sizes=(8,), methods=("nmf",))
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved["rows"] == payload["rows"] and saved["env"]["loadavg"]
    (row,) = payload["rows"]
    assert row["n_images"] == 8 and row["on_disk"]  # quick: a 1 MB budget sends 8 images' activations to disk
    stages = row["extract_s"] + row["crops_s"] + row["fit_s"] + row["encode_s"]
    assert 0 < stages <= row["total_s"] + 0.05
    assert row["ratio"] == pytest.approx(row["total_s"] / row["forward_s"], rel=0.05)
    assert row["peak_rss_mb"] >= row["forward_peak_rss_mb"] >= row["base_rss_mb"] > 0


ROOT = Path(__file__).resolve().parents[2]


def test_rows_parse_and_bad_rows_say_the_form() -> None:
    from conceptlens.bench.scale import parse_rows
    from conceptlens.errors import ParameterError

    assert parse_rows("nmf:100,1000; timm:resnet18/nmf:1000 ;") == (
        ("efficientnet_lite0", "nmf", 100), ("efficientnet_lite0", "nmf", 1000),
        ("timm:resnet18", "nmf", 1000))
    for bad in ("nmf", "nmf:", "nmf:ten", "nmf:0", ":100"):
        with pytest.raises(ParameterError, match=r"\[model/\]method:N"):
            parse_rows(bad)


def test_rows_merge_into_the_json_and_the_table_follows(tmp_path: Path, monkeypatch) -> None:
    from conceptlens.bench import scale

    def fake(model: str, method: str, n: int, budget: str, threads: int | None) -> dict:
        # forward passes per image: CRAFT's 26 (then a per-pass ratio), 1 otherwise
        passes = 26.0 if method == "craft" else 1.0
        return {"model": model, "method": method, "n_images": n, "on_disk": n > 500, "forward_s": n / 100,
                "extract_s": n / 100, "crops_s": 0.0, "fit_s": 1.0, "encode_s": 0.5, "total_s": n / 100 + 1.5,
                "ratio": 2.6, "ratio_per_pass": round(2.6 / passes, 2), "forward_passes_per_image": passes,
                "peak_rss_mb": 1500 + len(budget), "forward_peak_rss_mb": 1400, "base_rss_mb": 800,
                "loadavg": [1.25, 1.0, 1.0], "threads": 2}

    monkeypatch.setattr(scale, "_child", fake)
    scale.run_benchmark(out=tmp_path, rows="nmf:100,1000;craft:100")
    big = {**fake("efficientnet_lite0", "nmf", 10000, "64MB", 1), "forward_s": None, "ratio": None,
           "ratio_per_pass": None}  # above FORWARD_MAX_N: no forward peer
    assert scale.scale_table({"rows": [big]}).splitlines()[2] == (
        "| efficientnet_lite0 | nmf | 10,000 | disk | – | 101.5 | 100.0 / 0.0 / 1.0 / 0.5 | – | – "
        "| 1.50 | 1.2 |")
    scale.run_benchmark(out=tmp_path, rows="timm:resnet18/nmf:1000;nmf:1000")  # re-measures one row
    saved = json.loads((tmp_path / "scale.json").read_text())
    keys = [(r["model"], r["method"], r["n_images"]) for r in saved["rows"]]
    assert keys == [("efficientnet_lite0", "nmf", 100), ("efficientnet_lite0", "nmf", 1000),
                    ("efficientnet_lite0", "craft", 100), ("timm:resnet18", "nmf", 1000)]  # the plan's order
    table = (tmp_path / "scale.md").read_text()
    assert table == scale.scale_table(saved)
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[3] == ("| efficientnet_lite0 | nmf | 1,000 | disk | 10.0 | 11.5 | 10.0 / 0.0 / 1.0 / 0.5 "
                        "| 2.60× | – | 1.50 | 1.2 |")
    assert "| resnet18 | nmf | 1,000 |" in lines[5] and "| 0.10× |" in lines[4]  # CRAFT per pass


def test_summary_names_the_model_and_judges_craft_per_pass_and_memory_at_10000() -> None:
    from conceptlens.bench.summary import EXTRACTORS

    rows = [{"model": "timm:resnet18", "method": "nmf", "n_images": 1000, "on_disk": True, "ratio": 1.2,
             "peak_rss_mb": 1500, "loadavg": [2.5, 2.0, 1.0], "threads": 1},
            {"method": "craft", "n_images": 1000, "on_disk": False, "ratio": 26.0, "ratio_per_pass": 1.0,
             "forward_passes_per_image": 26.0, "peak_rss_mb": 1800},
            {"method": "nmf", "n_images": 10000, "on_disk": True, "ratio": 1.1, "peak_rss_mb": 2100}]
    h = EXTRACTORS["scale"]({"rows": rows})
    assert [(r["value"], r["met"]) for r in h] == [("1.20×", True), ("1.00×", True), ("2.10 GB", False)]
    assert h[0]["what"].startswith("resnet18 nmf on 1,000") and "per pass" in h[1]["what"]
    assert (h[0]["load"], h[0]["threads"]) == (2.5, 1) and "load" not in h[1]  # the row's own, if any


def test_the_docs_table_is_the_one_the_command_writes_from_the_committed_json() -> None:
    from conceptlens.bench.scale import scale_table

    results = ROOT / "bench" / "results"
    committed = json.loads((results / "scale.json").read_text())
    assert (results / "scale.md").read_text() == scale_table(committed), \
        "bench/results/scale.md is stale: run `conceptlens bench summary`"
    page = (ROOT / "docs" / "your-model.md").read_text()
    assert '{{ include "bench/results/scale.md" }}' in page  # the page shows that file, at build time
