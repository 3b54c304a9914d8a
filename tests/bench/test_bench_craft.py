"""bench craft: the Xplique wrappers compute the split's own g and h, and the quick bench writes its row."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import conceptlens as cl
from conceptlens.bench import craft as bench_craft

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


def test_permuted_wrappers_are_g_and_h_channels_first(tiny) -> None:  # noqa: ANN001
    split = cl.ModelSplit(tiny, "auto")
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    g, h = bench_craft._Permuted(split, "g"), bench_craft._Permuted(split, "h")
    a = g(x)
    assert a.shape[1] == split.g(x).shape[-1] and torch.equal(a, split.g(x).permute(0, 3, 1, 2))
    torch.testing.assert_close(h(a), tiny(x), rtol=1e-5, atol=1e-5)


def test_no_peer_without_xplique(tiny, monkeypatch) -> None:  # noqa: ANN001
    real = builtins.__import__

    def no_xplique(name: str, *args: Any, **kw: Any) -> Any:
        if name.startswith("xplique"):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_xplique)
    assert bench_craft.xplique_craft(cl.ModelSplit(tiny, "auto"), torch.zeros(1, 3, 16, 16), 0) is None


def test_bare_forward_runs_every_batch() -> None:
    seen: list[int] = []

    class Count(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert torch.is_inference_mode_enabled()
            seen.append(x.shape[0])
            return x

    assert bench_craft.bare_forward_seconds(Count(), torch.zeros(10, 1), 4) >= 0
    assert seen == [4, 4, 2]


@pytest.mark.slow
def test_quick_bench_writes_its_row(tmp_path: Path) -> None:
    out = bench_craft.run_benchmark(quick=True, out=tmp_path)
    row = out["row"]
    assert row["n_images"] == 2 and row["crops_per_image"] == 16 and row["crops_per_image_border"] == 25
    assert row["n_crops"] == 32
    assert row["extraction_throughput_vs_bare"] == pytest.approx(row["bare_forward_s"] / row["extraction_s"],
                                                                 rel=2e-2)
    assert len(row["indices"]) == 10 and all(math.isfinite(v) for v in row["indices"])
    assert abs(sum(row["indices"]) - 1) < 1e-3  # closed form on Lite0's GAP + linear head: no interactions
    saved = json.loads((tmp_path / "craft.json").read_text())
    assert saved["headline"][0]["target"] == "≥ 0.90×" and "xplique" in saved["row"]
