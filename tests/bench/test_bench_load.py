"""bench load: the competing processes start and always stop; the ratios are the measured times' ratios."""

from __future__ import annotations

import os

import pytest

from conceptlens.bench import load


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a reaped child is gone; a zombie would still answer, so read its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_busy_processes_run_and_are_stopped() -> None:
    with load.busy_processes(2, max_seconds=60) as pids:
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in pids)


def test_busy_processes_stopped_after_an_error() -> None:
    with pytest.raises(RuntimeError), load.busy_processes(1, max_seconds=60) as pids:
        raise RuntimeError("boom")
    assert not (os.path.exists(f"/proc/{pids[0]}") and _alive(pids[0]))


def test_quick_load_bench(tmp_path, one_thread_unless_slow) -> None:  # noqa: ANN001
    out = load.run_benchmark(quick=True, out=tmp_path, busy=0)
    assert (tmp_path / "load.json").exists()
    d = out["demo"]
    assert d["ratio"] == pytest.approx(d["loaded_s"] / d["alone_s"], abs=0.01)
    alone = out["headline"][-1]
    assert alone["value"] == f"{d['alone_s']:.1f} s" and alone["met"] == (d["alone_s"] <= 60.0)
    assert list(out["stages"]) == ["load", "extract", "fit ice", "fit kmeans", "metrics", "sweep", "report"]
    for v in out["stages"].values():
        if v["alone_s"] > 0.05:
            assert v["ratio"] == pytest.approx(v["loaded_s"] / v["alone_s"], abs=0.01)
    for cond in ("alone", "loaded"):
        n = out["nmf"][cond]
        assert n["speedup"] == pytest.approx(n["cd_s"] / n["ours_s"], rel=0.02)
        # both solvers reach about the same error on the same matrix
        assert abs(n["ours_err"] - n["cd_err"]) < 0.02
