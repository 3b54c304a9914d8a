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
