"""``conceptlens bench masks`` in quick mode writes valid results."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_masks_quick_writes_valid_json(tmp_path) -> None:
    import json

    from conceptlens import bench

    bench.run("masks", quick=True, out=tmp_path)
    payload = json.loads((tmp_path / "masks.json").read_text())
    assert payload["benchmark"] == "masks" and payload["config"]["quick"] is True
    methods = [r["method"] for r in payload["rows"]]
    assert methods == ["mask (per image)", "occlusion @ equal area", "grad_cam @ equal area",
                       "random @ equal area"]
    for r in payload["rows"] + payload["amortised_rows"]:
        for k in ("kept_fraction", "top1_kept", "confidence", "deletion_auc", "insertion_auc",
                  "complement_top1", "complement_confidence", "independent_top1"):
            assert 0 <= r[k] <= 1
    assert payload["rows"][0]["ratio_to_occlusion"] > 0
    assert len(payload["per_image"]) == 2 and set(payload["targets"]) >= {"per_image_seconds_le_30"}
    w = payload["world"]
    assert [r["method"] for r in w["rows"]][0] == "mask" and all(0 <= r["iou_key"] <= 1 for r in w["rows"])
    md = (tmp_path / "masks.md").read_text()
    # the headline is the default configuration, then the former default against it on the same photos
    assert md.startswith("### Headline: the default configuration")
    assert md.index("Before / after") < md.index("### Minimal masks")
    heads = payload["headline"]
    assert heads[0]["what"].startswith("masks, default") and isinstance(heads[0]["met"], bool)
    ba = payload["before_after"]
    assert [r["config"] for r in ba["rows"]] == ["former default", "default"]
    assert ba["rows"][0]["params"]["fold"] is False and ba["rows"][1]["params"]["fold"] is True
    assert ba["speedup_wall"] == pytest.approx(
        ba["rows"][0]["seconds_per_image"] / ba["rows"][1]["seconds_per_image"], rel=0.01)
