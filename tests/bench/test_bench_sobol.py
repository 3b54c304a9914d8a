"""bench sobol: the peer calls h in exactly the batch shapes the estimator uses, and the bench runs."""

from __future__ import annotations

import math

import pytest
import torch

from conceptlens.bench import sobol as bench_sobol
from conceptlens.errors import ParameterError
from conceptlens.importance.sobol import call_plan, chunk_budget, concept_total_indices, sobol_design


class Recorder:
    """A GAP + linear head that records the rows of every call."""

    def __init__(self, C: int, K: int = 3) -> None:
        self.w = torch.randn(C, K, generator=torch.Generator().manual_seed(1))
        self.sizes: list[int] = []

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        self.sizes.append(a.shape[0])
        return a.mean((1, 2)) @ self.w


@pytest.mark.parametrize(("N", "k", "chunk"), [(5, 4, "auto"), (7, 3, 4000), (3, 6, None), (9, 5, 20000)])
def test_peer_calls_match_the_estimator(N: int, k: int, chunk: int | str | None) -> None:
    g = torch.Generator().manual_seed(0)
    U, W = torch.rand(N, 2, 3, k, generator=g), torch.rand(k, 6, generator=g)
    h = Recorder(6)
    concept_total_indices(U, W, h, 0, n_designs=8, n_boot=0, progress=False, batch_size=50, chunk_bytes=chunk)
    n = sobol_design(k, 8, 0)[0].shape[0]
    plan = call_plan(N, n, k, 2 * 3 * 6 * 4, 50, chunk_budget(chunk, "cpu"))
    sizes = bench_sobol.call_sizes(N, n, k, plan)
    assert h.sizes == sizes
    assert sum(sizes) == N * n * (k + 1)
    peer = Recorder(6)
    bench_sobol.bare_head_seconds(peer, torch.rand(N, 2, 3, 6), sizes)
    assert peer.sizes == sizes


def test_chunk_budget() -> None:
    assert chunk_budget("auto", "cpu") == 2**24
    assert chunk_budget(None) is None and chunk_budget(123) == 123
    with pytest.raises(ParameterError, match="chunk_bytes"):
        chunk_budget("big")


def test_quick_bench_writes_its_row(tmp_path, one_thread_unless_slow) -> None:  # noqa: ANN001
    out = bench_sobol.run_benchmark(quick=True, out=tmp_path)
    row = out["row"]
    assert row["h_rows"] == row["n_images"] * row["n_designs"] * (row["k"] + 1)
    assert row["overhead"] == pytest.approx(row["sobol_s"] / row["bare_h_s"] - 1, abs=2e-3)
    assert row["write_floor_over_bare"] == pytest.approx(row["write_floor_s"] / row["bare_h_s"], rel=1e-2)
    assert len(row["indices"]) == 10 and all(math.isfinite(v) for v in row["indices"])
    assert (tmp_path / "sobol.json").exists()


def test_pooled_estimator_calls_h_on_one_position_per_row_in_the_planned_shapes() -> None:
    g = torch.Generator().manual_seed(0)
    N, k = 6, 4
    U, W = torch.rand(N, 2, 3, k, generator=g), torch.rand(k, 6, generator=g)
    h, seen = Recorder(6), []
    inner = h.__call__

    def spy(a: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(a.shape[1:]))
        return inner(a)

    pooled = concept_total_indices(U, W, spy, 0, n_designs=8, n_boot=0, progress=False, batch_size=50,
                                   pooled=True)
    n = sobol_design(k, 8, 0)[0].shape[0]
    plan = call_plan(N, n, k, 6 * 4, 50, chunk_budget("auto", "cpu"))  # one position of 6 floats per row
    assert h.sizes == bench_sobol.call_sizes(N, n, k, plan)
    assert set(seen) == {(1, 1, 6)}
    full = concept_total_indices(U, W, Recorder(6), 0, n_designs=8, n_boot=0, progress=False, batch_size=50)
    torch.testing.assert_close(pooled.indices, full.indices, rtol=1e-4, atol=1e-6)


def test_quick_bench_measures_the_pooled_path(tmp_path, one_thread_unless_slow) -> None:  # noqa: ANN001
    row = bench_sobol.run_benchmark(quick=True, out=tmp_path)["row"]
    assert row["pools_first"] is True  # Lite0's layer "auto": GAP + linear
    assert row["pooled_overhead"] == pytest.approx(row["pooled_s"] / row["bare_h_pooled_s"] - 1, abs=2e-3)
    assert row["pooled_max_index_diff"] < 1e-4
