"""``conceptlens bench eddp`` (:mod:`conceptlens.bench.eddp`): the grid's JSON and table, in quick mode."""

from __future__ import annotations

import json

import torch


def test_bench_eddp_quick_writes_every_method(tmp_path) -> None:
    from conceptlens import bench
    from conceptlens.bench.eddp import METHODS

    threads = torch.get_num_threads()
    bench.run("eddp", quick=True, out=tmp_path)
    assert torch.get_num_threads() == threads  # the pinned single thread is given back
    d = json.loads((tmp_path / "eddp.json").read_text())
    assert d["benchmark"] == "eddp" and d["quick"] is True and d["settings"]["threads"] == 1
    assert len(d["rows"]) == 2 and d["rows"][0]["on_rate"] is None
    for row in d["rows"]:
        assert set(METHODS) <= set(row)
        # the oracle filters recover the planted presence exactly; every score is an IoU / cosine
        assert row["oracle"]["iou"] == 1.0 and row["oracle"]["cosine"] > 0.9
        for m in METHODS:
            assert 0.0 <= row[m]["iou"] <= 1.0
            assert row[m]["cosine"] is None or -1.0 <= row[m]["cosine"] <= 1.0
    # the paper's easy setting: the default EDDP recovers it even on the quick budget
    assert d["rows"][0]["eddp"]["iou"] >= 0.8
    md = (tmp_path / "eddp.md").read_text()
    assert md.count("\n| ") == 3 and "eddp_legacy IoU / cos" in md
