"""conceptlens.workflows.demo: the demo's budgets and sections come from the methods' declarations."""

from __future__ import annotations

import torch

import conceptlens as cl
from conceptlens import decompose
from conceptlens.workflows.demo import DEMO_METHODS, demo_params, sweep_sections
from helpers import TinyNet


def test_demo_params_follow_the_declarations() -> None:
    names = DEMO_METHODS.split(",")
    p = demo_params(names, 224)
    # crop-fitted methods take the demo's crops as theirs; EDDP gets its declared budget; nothing else
    assert p == {"craft": {"patch_size": 224}, "eddp": {"max_iter": 300, "ura_weight": 0.0}}
    for m in names:
        if m in p and m != "masks":
            cls = decompose.get({"ice": "nmf"}.get(m, m))
            assert set(cls.demo_params) <= set(p[m])
    assert demo_params(["ice", "masks"], 224) == {}


def test_sweep_sections_only_for_a_method_with_a_sweep_param() -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    A = split.g(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert sweep_sections("0,1", ["ice", "pca", "masks"], A, split, 0, 2, 0) == []
    assert sweep_sections("  ", ["face"], A, split, 0, 2, 0) == []


def test_stage_table_lists_every_stage_with_its_share() -> None:
    from conceptlens.workflows.demo import stage_table

    text = stage_table({"load": 1.0, "fit ice": 3.0})
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "s", "share"]
    assert lines[1].split() == ["load", "1.0", "25", "%"]
    assert lines[2].split() == ["fit", "ice", "3.0", "75", "%"]


def test_demo_reports_its_stages(tmp_path, one_thread_unless_slow) -> None:  # noqa: ANN001
    from conceptlens.workflows.demo import run_demo

    lines: list[str] = []
    res = run_demo(tmp_path / "r", methods="ice,kmeans,face", patch=224, kl_weights="", echo=lines.append)
    st = res.stages
    # k-means and FACE fit side by side in one-thread workers: one stage, their wall time (their own fit
    # times overlap, so listing both would count that time twice and understate the metrics)
    assert list(st) == ["load", "extract", "fit ice", "fit kmeans ∥ face", "metrics", "sweep", "report"]
    assert res.compare.side_by_side == ["kmeans", "face"]
    own = {r["method"]: r["seconds"] for r in res.compare.rows}
    assert st["fit kmeans ∥ face"] <= own["kmeans"] + own["face"] + 0.05
    assert all(v >= 0 for v in st.values())
    # the stages are consecutive laps inside the demo: together at most its wall time
    assert sum(st.values()) <= res.seconds + 0.05
    assert any(line.startswith("stage") for line in lines) and (tmp_path / "r" / "index.html").exists()
