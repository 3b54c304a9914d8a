"""``conceptlens bench face`` (:mod:`conceptlens.bench.face`): both sweeps written, in quick mode."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_face_quick_writes_both_sweeps(tmp_path) -> None:
    import json

    from conceptlens import bench

    bench.run("face", quick=True, out=tmp_path)
    d = json.loads((tmp_path / "face.json").read_text())
    assert d["benchmark"] == "face" and d["quick"] is True
    for name in ("lite0", "world"):
        methods = [(r["method"], r["kl_weight"]) for r in d[name]["rows"]]
        assert methods == [("ice", 0.0), ("craft", 0.0), ("face", 0.0), ("face", 0.1)]
        kl = {r["kl_weight"]: r["kl"] for r in d[name]["rows"] if r["method"] == "face"}
        assert kl[0.1] <= kl[0.0]
    md = (tmp_path / "face.md").read_text()
    assert md.count("| ICE |") == 2 and "Claim" in md
    assert (tmp_path / "face.png").stat().st_size > 10_000
    # (its time is a benchmark number, not a verdict: a busy machine must not fail the test)
