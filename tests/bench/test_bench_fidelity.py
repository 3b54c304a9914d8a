"""bench fidelity runs on the demo data and its numbers are ICE's metrics of the fitted explainers."""

from __future__ import annotations

from conceptlens.bench import fidelity


def test_quick_fidelity_bench(tmp_path, one_thread_unless_slow) -> None:  # noqa: ANN001
    out = fidelity.run_benchmark(quick=True, out=tmp_path)
    assert out["n_images"] == 13 and (tmp_path / "fidelity.json").exists()
    rows = {(r["method"], r["k"]): r for r in out["rows"]}
    assert set(rows) == {(m, k) for m in ("nmf", "pca", "kmeans") for k in (5, 10)}
    for r in rows.values():
        assert 0.0 <= r["fid_c"] <= 1.0 and r["reconstruction_error"] >= 0.0
    # more concepts reconstruct NMF's activations better (same data, same seed)
    assert rows[("nmf", 10)]["reconstruction_error"] < rows[("nmf", 5)]["reconstruction_error"]


def test_full_demo_activations_are_the_demo_crops(one_thread_unless_slow) -> None:  # noqa: ANN001
    split, x, A, target = fidelity.demo_activations(quick=False)
    assert x.shape == (117, 3, 224, 224) and A.shape == (117, 7, 7, 1280) and 0 <= target < 1000
