"""Tests of ``conceptlens bench groundtruth``: the leaderboard run end to end on the trained world CNN
(slow): deterministic numbers, failures recorded in their row, and the three files it writes."""

from __future__ import annotations

import json

import pytest
from torch import nn

from conceptlens.bench import groundtruth as gt
from conceptlens.world.leaderboard import registered_methods


def _numbers(payload: dict) -> str:
    """The payload without wall times, as canonical JSON."""

    def strip(v: object) -> object:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("fit_s", "fit_vs_nmf", "seconds")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return json.dumps(strip(payload), sort_keys=True)


@pytest.mark.slow
def test_run_is_deterministic_and_records_failures(tmp_path, monkeypatch, world_model: nn.Module) -> None:
    from conceptlens.decompose import base
    from conceptlens.decompose.nmf import NMF

    class Boom(NMF):
        def fit(self, A, layer_name=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom on purpose")

    monkeypatch.setitem(base._REGISTRY, "boom", Boom)
    kw = dict(methods=["nmf", "kmeans", "boom"], n_per_class=12, n_concepts=6, classes=[0], verbose=False)
    a = gt.run_benchmark(quick=True, out=tmp_path / "a", **kw)
    b = gt.run_benchmark(quick=True, out=tmp_path / "b", **kw)
    assert _numbers(a) == _numbers(b)
    rows = {r["method"]: r for r in a["rows"]}
    assert "boom on purpose" in rows["boom"]["error"] and rows["boom"]["classes"] == 0
    assert rows["nmf"]["classes"] == 1 and "error" not in rows["nmf"]
    assert rows["oracle"]["iou"] == pytest.approx(1.0) and rows["oracle"]["pointing"] == pytest.approx(1.0)
    assert rows["random"]["iou"] < rows["oracle@layer"]["iou"]


@pytest.mark.slow
def test_quick_run_writes_three_files(tmp_path, world_model: nn.Module) -> None:
    payload = gt.run_benchmark(quick=True, out=tmp_path, verbose=False)  # its time is a bench number
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"groundtruth.{ext}").stat().st_size > 100
    saved = json.loads((tmp_path / "groundtruth.json").read_text())
    assert saved["benchmark"] == "groundtruth" and saved["rows"] == payload["rows"]
    assert (tmp_path / "groundtruth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "groundtruth.md").read_text()
    for name in registered_methods() + ["oracle", "random"]:
        assert f"| {name} |" in md
    rows = {r["method"]: r for r in payload["rows"]}
    assert rows["random"]["iou"] < 0.25 and rows["oracle"]["iou"] == pytest.approx(1.0)
    assert {r["importance"] for r in payload["importance_rows"]} >= {"linear", "gradient"}
