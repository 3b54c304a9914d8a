"""cl.compare: one row per method with every metric, best() follows each metric's direction, a failing
method gives an error row, the CSV round-trips, and the report links every method."""

from __future__ import annotations

import math

import pytest
import torch

import conceptlens as cl
from conceptlens.errors import ParameterError
from conceptlens.workflows.compare import (
    COLUMNS,
    METRICS,
    CompareResult,
    compare,
    reading,
    summary_section,
    write_report,
)
from helpers import TinyNet

CONCEPT_COLS = ("fid_c", "fid_r", "accuracy", "reconstruction_error", "c_insertion", "c_deletion",
                "c_mu_fidelity", "c_gini", "sparsity", "seconds")


@pytest.fixture(scope="module")
def result() -> tuple[CompareResult, torch.Tensor, cl.ModelSplit]:
    split = cl.ModelSplit(TinyNet(), "auto")
    x = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = compare(split, x, None, methods=("ice", "pca", "kmeans", "craft", "face"), n_concepts=4, seed=0,
                  method_params={"craft": {"patch_size": 8}}, progress=False)
    return res, x, split


def test_one_row_per_method_with_every_metric(result) -> None:
    res, x, split = result
    assert [r["method"] for r in res.rows] == ["ice", "pca", "kmeans", "craft", "face"]
    assert set(res.explainers) == {"ice", "pca", "kmeans", "craft", "face"}
    for r in res.rows:
        assert set(r) == set(COLUMNS)
        assert r["error"] == "", r["error"]
        for c in CONCEPT_COLS:
            assert math.isfinite(r[c]), (r["method"], c)
        assert 0 <= r["fid_c"] <= 1 and 0 <= r["accuracy"] <= 1 and 0 < r["sparsity"] <= 1
        assert math.isnan(r["stability"]) and math.isnan(r["kept_area"])  # not asked for / masks only
    # the numbers are those of the public metrics on the same explainer
    A = split.g(x)
    ex = res.explainers["ice"]
    row = res.rows[0]
    fid = cl.metrics.fidelity(ex, x, A=A)
    assert row["fid_c"] == pytest.approx(fid["fid_c"])
    assert row["fid_r"] == pytest.approx(fid["fid_r"], rel=1e-5)
    assert row["c_insertion"] == pytest.approx(cl.metrics.c_insertion(ex, A=A), rel=1e-5)
    assert row["c_deletion"] == pytest.approx(cl.metrics.c_deletion(ex, A=A), rel=1e-5, abs=1e-7)
    assert row["c_gini"] == pytest.approx(cl.metrics.c_gini(ex.importance_))
    # k-means codes are one-hot: exactly 1/k of them are non-zero
    assert res.rows[2]["sparsity"] == pytest.approx(1 / 4)
    # the target is the class the model predicts most often
    with torch.no_grad():
        pred = split.model(x).argmax(1)
    assert res.target == int(torch.bincount(pred).argmax())


def test_same_seed_same_table(result) -> None:
    res, x, split = result
    again = compare(split, x, res.target, methods="ice,kmeans", n_concepts=4, seed=0, progress=False)
    for a, b in zip(again.rows, [res.rows[0], res.rows[2]], strict=True):
        for c in CONCEPT_COLS[:-1]:
            assert a[c] == b[c], c


def _row(method: str, **vals: float) -> dict:
    r = {"method": method, "n_concepts": 3, **{m: float("nan") for m in METRICS}, "error": ""}
    r.update(vals)
    return r


def test_best_follows_each_direction() -> None:
    res = CompareResult(rows=[
        _row("a", fid_c=0.5, fid_r=0.1, c_deletion=0.3, c_insertion=0.9, seconds=5.0),
        _row("b", fid_c=0.9, fid_r=0.4, c_deletion=0.1, c_insertion=0.2, seconds=1.0),
        _row("c", fid_c=0.9, fid_r=0.05),  # ties go to the first; NaN elsewhere is ignored
        {**_row("d", fid_c=1.0, fid_r=0.0, seconds=0.1), "error": "RuntimeError: boom"},  # error rows ignored
    ], explainers={"a": None, "b": None, "c": None})  # type: ignore[dict-item]
    best = res.best()
    assert best["fid_c"] == ("b", 0.9)
    assert best["fid_r"] == ("c", 0.05)
    assert best["c_deletion"] == ("b", 0.1)
    assert best["c_insertion"] == ("a", 0.9)
    assert best["seconds"] == ("b", 1.0)
    assert "stability" not in best  # no finite value
    assert set(METRICS.values()) == {"max", "min"}
    # b wins fid_c, c_deletion (seconds does not count); a wins c_insertion; c wins fid_r
    assert res.best_method() == "b"


def test_ranking_metrics_compete_only_among_faithful_methods() -> None:
    """A method whose reconstruction loses the predictions (the demo's EDDP: accuracy 0 %, C-Ins 1.17 above
    every faithful method's) never gets the C-Ins / C-Del / C-μFid "best" mark, in any rendering."""
    from conceptlens.report.sections.compare import best_values
    from conceptlens.workflows.compare import METRIC_COLUMNS, faithful, markdown_table, reading

    rows = [_row("nmf", fid_c=0.4, accuracy=1.0, c_insertion=0.99, c_deletion=-0.4, c_mu_fidelity=0.7),
            _row("pca", fid_c=0.45, accuracy=1.0, c_insertion=0.55, c_deletion=0.55, c_mu_fidelity=-0.1),
            _row("eddp", fid_c=0.19, accuracy=0.0, c_insertion=1.17, c_deletion=-0.9, c_mu_fidelity=0.9),
            _row("kmeans", fid_c=0.6, c_insertion=2.0)]  # no accuracy: fid_c ≥ 0.5 decides
    assert [faithful(r) for r in rows] == [True, True, False, True]
    res = CompareResult(rows=rows[:3])
    best = res.best()
    assert best["c_insertion"] == ("nmf", 0.99) and best["c_deletion"] == ("nmf", -0.4)
    assert best["c_mu_fidelity"] == ("nmf", 0.7)
    assert best["fid_c"] == ("pca", 0.45)  # the other columns are unaffected
    assert best_values(rows[:3], METRIC_COLUMNS)["c_insertion"] == 0.99
    assert "**1.170**" not in markdown_table(res) and "**0.990**" in markdown_table(res)
    text = " ".join(reading(res))
    assert "for EDDP" not in text and "at least half of the predictions" in text
    assert CompareResult(rows=rows).best()["c_insertion"] == ("kmeans", 2.0)


def test_failing_method_gives_error_row(result) -> None:
    _, x, split = result
    # a 20-px crop does not fit in 16-px images: CRAFT fails, the others still run
    res = compare(split, x, 0, methods=("pca", "craft"), n_concepts=3,
                  method_params={"craft": {"patch_size": 20}}, progress=False)
    pca, craft = res.rows
    assert pca["error"] == "" and math.isfinite(pca["fid_c"])
    assert craft["error"] and all(math.isnan(craft[c]) for c in METRICS)
    assert "craft" not in res.explainers and "pca" in res.explainers
    assert any("CRAFT failed" in s for s in reading(res))
    assert "failed" in summary_section(res).html


def test_bad_arguments() -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ParameterError, match="unknown method"):
        compare(split, x, 0, methods=("nmf", "nope"))
    with pytest.raises(ParameterError, match="twice"):
        compare(split, x, 0, methods=("nmf", "ice"))
    with pytest.raises(ParameterError, match="not in methods"):
        compare(split, x, 0, methods=("nmf",), method_params={"pca": {}})


def test_csv_round_trip(result, tmp_path) -> None:
    res, _, _ = result
    rows = [*res.rows, {**_row("x"), "error": 'ValueError: "quoted", comma'}]
    p = CompareResult(rows=rows).to_csv(tmp_path / "t" / "compare.csv")
    back = CompareResult.from_csv(p)
    assert len(back.rows) == len(rows)
    for a, b in zip(back.rows, rows, strict=True):
        assert a["method"] == b["method"] and a["error"] == b["error"] and a["n_concepts"] == b["n_concepts"]
        for c in METRICS:
            assert (math.isnan(a[c]) and math.isnan(b[c])) or a[c] == b[c], c
    assert back.best() == res.best()
    with pytest.raises(ParameterError):
        CompareResult.from_csv(tmp_path / "missing.csv")


@pytest.mark.slow
def test_summary_marks_best_and_report_links_methods(result, tmp_path) -> None:
    res, x, _ = result
    html = summary_section(res, {m: f"{m}/index.html" for m in res.explainers}).html
    best = res.best()
    # one bold cell per method that reaches a column's best value (ties all marked)
    n_best = sum(1 for c, (_, v) in best.items() for r in res.rows if not r["error"] and r[c] == v)
    assert n_best >= len(best) and html.count('class="best"') == n_best
    assert 'href="face/index.html"' in html
    assert "keeps" in html  # the plain-language reading
    path = write_report(res, x, tmp_path / "cmp", progress=False)
    assert path == tmp_path / "cmp" / "index.html"
    page = path.read_text()
    assert 'id="compare"' in page and "Comparison of methods" in page
    assert 'id="side-by-side"' in page and (tmp_path / "cmp" / "img" / "side_by_side_3.png").is_file()
    for m in res.explainers:
        assert (tmp_path / "cmp" / m / "index.html").is_file()
    assert CompareResult.from_csv(tmp_path / "cmp" / "compare.csv").best() == best


@pytest.mark.slow
def test_cli_compare(tmp_path, tiny_images) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from conceptlens.cli import app

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate((tiny_images[:6] * 0.25 + 0.5).clamp(0, 1)):
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(folder / f"{i}.png")
    out = tmp_path / "cmp"
    # CRAFT's default 64-px crops do not fit in these 16-px images: its row says so, the rest goes on
    res = CliRunner().invoke(app, ["compare", "--images", str(folder), "--model", "conftest:TinyNet",
                                   "--methods", "ice,kmeans,craft", "-k", "3", "--target", "1",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = CompareResult.from_csv(out / "compare.csv")
    assert [r["method"] for r in table.rows] == ["ice", "kmeans", "craft"]
    assert table.rows[2]["error"] and not table.rows[0]["error"]
    assert "failed" in res.output
    assert (out / "index.html").is_file() and (out / "ice" / "index.html").is_file()
    assert (out / "kmeans" / "index.html").is_file() and not (out / "craft").exists()
    bad = CliRunner().invoke(app, ["compare", "--images", str(folder), "--model", "conftest:TinyNet",
                                   "--methods", "ice,nope", "-o", str(out)])
    assert bad.exit_code == 2 and "unknown method" in bad.output


def test_mask_images_selects_the_masked_subset() -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    res = compare(split, x, 0, methods=("masks",), progress=False, mask_images=[4, 1],
                  method_params={"masks": {"steps": 3, "size": 8, "width": 4}})
    assert res.rows[0]["error"] == "", res.rows[0]["error"]
    assert res.mask_indices == [4, 1] and res.masks.masks.shape[0] == 2
    assert compare(split, x, 0, methods=("pca",), progress=False).mask_indices == []
    # a count takes the images classified as the target first
    pred = split.h(split.g(x)).argmax(1)
    c = int(pred[3])
    res = compare(split, x, c, methods=("masks",), progress=False, mask_images=1,
                  method_params={"masks": {"steps": 2, "size": 8, "width": 4}})
    assert res.mask_indices == [int(torch.nonzero(pred == c)[0])]
    for bad in (0, 7, [6], [], True):
        with pytest.raises(ParameterError, match="mask_images"):
            compare(split, x, 0, methods=("pca",), mask_images=bad)


def test_side_by_side_shows_every_method_per_image(result) -> None:
    from conceptlens.workflows.compare import side_by_side_section

    res, x, _ = result
    s = side_by_side_section(res, x, [0, 2, 99], names=[f"pic{i}" for i in range(len(x))])
    # one figure per selected image (99 is out of range and skipped), each naming every method's concept
    assert sorted(s.images) == ["side_by_side_0.png", "side_by_side_1.png"]
    assert s.html.count("<figure") == 2 and "pic0" in s.html and "pic2" in s.html
    for m in ("ICE", "PCA", "k-means", "CRAFT", "FACE"):
        assert s.html.count(f"<li>{m}: concept") == 2, m
    # the caption's concept is the one with the largest contribution on that image
    loc = res.explainers["ice"].explain(x[:1])
    j = int(loc.contributions[0].argmax())
    assert f"ICE: concept {j} adds {float(loc.contributions[0, j]):+.2f}" in s.html
    fig = s.images["side_by_side_0.png"]
    assert len(fig.axes) == 1 + len(res.explainers)  # the picture + one panel per method
    with pytest.raises(ParameterError, match="select no image"):
        side_by_side_section(res, x, [50])


def test_one_thread_methods_fit_side_by_side_with_the_same_rows(result, monkeypatch) -> None:
    # k-means, FACE and EDDP declare fit_threads = 1: compare fits them in one-thread workers first
    from conceptlens import _threads
    from conceptlens.workflows import compare as compare_mod

    _, x, split = result
    calls: list[int] = []

    def two_workers(fits):  # noqa: ANN001, ANN202
        calls.append(len(fits))
        return _threads.one_thread_each(fits, workers=2)

    kw = dict(methods=("pca", "kmeans", "face"), n_concepts=3, seed=0, progress=False,
              method_params={"face": {"max_iter": 20}})
    with _threads.threads(1):  # each one-thread fit's own result, one after the other
        seq = compare(split, x, 0, **kw)
    monkeypatch.setattr(compare_mod, "one_thread_each", two_workers)
    with _threads.threads(1):
        par = compare(split, x, 0, **kw)
    assert calls == [2, 3]  # the fits of k-means and FACE (PCA keeps the process's threads), every metric
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in seq.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in par.rows]
    assert all(r["error"] == "" for r in par.rows)


def test_a_failing_one_thread_method_is_its_rows_error(result, monkeypatch) -> None:
    from conceptlens import _threads
    from conceptlens.workflows import compare as compare_mod

    _, x, split = result
    monkeypatch.setattr(compare_mod, "one_thread_each",
                        lambda fits: _threads.one_thread_each(fits, workers=2))
    res = compare(split, x, 0, methods=("kmeans", "face"), n_concepts=3, progress=False,
                  method_params={"face": {"max_iter": -1}})
    km, face = res.rows
    assert km["error"] == "" and face["error"].startswith("ParameterError")
    assert "face" not in res.explainers and "kmeans" in res.explainers


def test_a_failing_metric_is_its_rows_error_and_the_others_are_measured(result, monkeypatch) -> None:
    from conceptlens.workflows import _compare_rows

    _, x, split = result
    real = _compare_rows.concept_metrics

    def broken_for_pca(ex, *a):  # noqa: ANN001, ANN202
        if ex.method == "pca":
            raise ValueError("no curve\nsecond line")
        return real(ex, *a)

    monkeypatch.setattr(_compare_rows, "concept_metrics", broken_for_pca)
    res = compare(split, x, 0, methods=("pca", "kmeans"), n_concepts=3, progress=False)
    pca, km = res.rows
    assert pca["error"] == "ValueError: no curve" and "pca" not in res.explainers
    assert km["error"] == "" and km["fid_c"] == km["fid_c"] and "kmeans" in res.explainers
