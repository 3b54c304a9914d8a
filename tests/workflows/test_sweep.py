"""FACE's λ sweep (:mod:`conceptlens.workflows.sweep`), its result and report section, on the toy world."""

from __future__ import annotations

import pytest
import torch

from conceptlens.errors import ParameterError, TargetError
from conceptlens.workflows.sweep import sweep
from face_world import K

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_sweep_on_the_tiny_world(face_toy) -> None:
    A, head = face_toy
    c = int(head(A).argmax(1).mode().values)
    rows = sweep(A, head, c, kl_weights=(0.0, 0.05), n_concepts=3, n_designs=16, with_stability=True,
                 max_iter=50)
    assert [r["kl_weight"] for r in rows] == [0.0, 0.05]
    keys = {"mse", "kl", "accuracy", "c_ins", "c_del", "c_gini", "sparsity", "stability", "time",
            "fitted_accuracy", "fitted_c_ins", "fitted_c_del"}
    assert all(keys <= set(r) for r in rows)
    nmf, face = rows
    assert face["mse"] <= nmf["mse"] * 1.05 and face["kl"] <= nmf["kl"] * 1.05  # held-out, plain codes
    assert 0 <= face["c_ins"] <= 1 and 0 < face["stability"] <= 1 + 1e-9
    # On its own fitted images the KL term does what it is fitted for: keeps the predictions better.
    assert face["fitted_c_ins"] > nmf["fitted_c_ins"] and face["fitted_accuracy"] >= nmf["fitted_accuracy"]


def test_sweep_over_several_classes_is_the_mean(face_toy) -> None:
    A, head = face_toy
    counts = torch.bincount(head(A).argmax(1), minlength=K)
    c1, c2 = torch.argsort(counts, descending=True)[:2].tolist()
    both = sweep(A, head, [c1, c2], kl_weights=(0.0,), n_concepts=3, n_designs=16)[0]
    one = [sweep(A, head, c, kl_weights=(0.0,), n_concepts=3, n_designs=16)[0] for c in (c1, c2)]
    for key in ("accuracy", "c_ins", "c_del", "c_gini"):
        assert both[key] == pytest.approx((one[0][key] + one[1][key]) / 2)
    # The split is stratified by predicted class: each class keeps half of its images for scoring.
    assert both["n_images"] == round(int(counts[c1]) / 2) + round(int(counts[c2]) / 2)
    with pytest.raises(TargetError):
        sweep(A, head, [c1, K + 1], kl_weights=(0.0,))  # no image is classified as K + 1


def _tiny_crops(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four 2×2 windows of every image's 3×3 activations, as CRAFT's crops, with their image index."""
    crops = torch.cat([A[:, i : i + 2, j : j + 2] for i in (0, 1) for j in (0, 1)])
    return crops, torch.arange(A.shape[0]).repeat(4)


@pytest.fixture(scope="module")
def tiny_sweep(face_toy):
    from conceptlens.workflows.sweep import face_sweep

    A, head = face_toy
    c = int(head(A).argmax(1).mode().values)
    crops, index = _tiny_crops(A)
    res = face_sweep(A, head, c, "0, 1", n_concepts=3, n_designs=16, craft_A=crops, craft_index=index,
                     with_stability=True, max_iter=40, config={"dataset": "tiny <world>"})
    return res, c


def test_face_sweep_rows_references_and_kl(tiny_sweep, face_toy) -> None:
    from conceptlens.workflows.sweep import SWEEP_COLUMNS

    res, c = tiny_sweep
    assert [(r["method"], r["kl_weight"]) for r in res.rows] == [("ice", 0.0), ("craft", 0.0), ("face", 0.0),
                                                                  ("face", 1.0)]
    assert all(set(SWEEP_COLUMNS) <= set(r) for r in res.rows)
    ice, craft, face0, face1 = res.rows
    # λ = 0 is NMF: FACE's solver starts from ICE's factors and only lowers the reconstruction error.
    assert face0["mse"] <= ice["mse"] * 1.01
    assert face1["kl"] <= face0["kl"] and face1["kl"] < ice["kl"]
    for r in res.rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["c_ins"] <= 1 and 0 <= r["sparsity"] <= 1
        assert 0 < r["stability"] <= 1 + 1e-9  # CRAFT's refits split its crops by image
        held = torch.tensor(res.config["split"]["held_out"])
        assert r["n_images"] == int((face_toy[1](face_toy[0][held]).argmax(1) == c).sum())  # held-out ones
    # CRAFT's bank comes from the crops (one averaged row each), not from the per-position rows.
    assert craft["mse"] != pytest.approx(ice["mse"], rel=1e-3)
    assert res.config["targets"] == [c] and res.config["dataset"] == "tiny <world>"


def test_face_sweep_files_round_trip(tiny_sweep, tmp_path) -> None:
    import csv
    import json

    from PIL import Image

    from conceptlens.workflows.sweep import SWEEP_COLUMNS, SweepResult

    res, _ = tiny_sweep
    paths = res.save(tmp_path / "out")
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SWEEP_COLUMNS and [r["method"] for r in rows] == ["ice", "craft", "face", "face"]
    assert float(rows[3]["kl"]) == res.rows[3]["kl"]  # exact floats
    d = json.loads(paths["json"].read_text(), parse_constant=lambda s: pytest.fail(f"non-JSON constant {s}"))
    back = SweepResult.from_dict(d)
    assert [r["kl_weight"] for r in back.rows] == [r["kl_weight"] for r in res.rows]
    assert back.rows[2]["c_del"] == res.rows[2]["c_del"] and d["claim"]["base"] == "face"
    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and im.size[0] > 600


def test_face_sweep_validation(face_toy) -> None:
    from conceptlens.workflows.sweep import face_sweep, parse_kl_weights

    A, head = face_toy
    assert parse_kl_weights("0, 1e-5,10,0") == (0.0, 1e-5, 10.0)
    assert parse_kl_weights([0, 2]) == (0.0, 2.0)
    for bad in ("-1", "abc", "", "0,nan", "inf", ",", [True]):
        with pytest.raises(ParameterError, match="KL weight"):
            parse_kl_weights(bad)
    with pytest.raises(ParameterError, match="reference"):
        face_sweep(A, head, 0, (0.0,), 3, references=("pca",))
    with pytest.raises(ParameterError, match="craft_index"):
        face_sweep(A, head, 0, (0.0,), 3, craft_A=A)


def _row(method: str, lam: float, **kw: float) -> dict:
    base = {"method": method, "kl_weight": lam, "mse": 1.0, "kl": 1.0, "total": 1.0, "accuracy": 0.5,
            "agreement": 0.5, "c_ins": 0.5, "c_del": 0.3, "c_gini": 0.5, "sparsity": 0.5, "stability": 0.8,
            "fitted_accuracy": 0.5, "fitted_c_ins": 0.5, "fitted_c_del": 0.3, "seconds": 1.0, "n_iter": 5.0,
            "n_images": 10.0}
    return {**base, **kw}


def test_claim_verdict_on_known_rows() -> None:
    from conceptlens.workflows.sweep import SweepResult

    rows = [_row("ice", 0.0, accuracy=0.4), _row("face", 0.0),
            _row("face", 1e-3, accuracy=0.51, kl=0.9),                 # no gain beyond the tolerance
            _row("face", 1e-1, accuracy=0.7, c_ins=0.6, mse=1.05),     # gains, MSE +5 %: holds
            _row("face", 1.0, accuracy=0.9, c_ins=0.8, mse=1.3),       # gains, MSE +30 %: hurts
            _row("face", 10.0, accuracy=0.9, c_del=0.2),               # C-Del lost
            _row("face", 100.0, accuracy=0.9, stability=0.5)]          # stability lost
    v = SweepResult(rows).claim()
    assert v["base"] == "face" and v["holds_at"] == [0.1] and v["best"] == 0.1
    why = {p["kl_weight"]: p["why"] for p in v["per_lambda"]}
    assert "MSE +30 %" in why[1.0] and "c_del" in why[10.0] and "stability" in why[100.0]
    assert "tolerance" in why[1e-3] and v["text"].startswith("holds at λ ∈ {0.1}")
    # Without FACE at λ = 0 the base is ICE; without any λ > 0 nothing is claimed.
    assert SweepResult([rows[0], rows[3]]).claim()["base"] == "ice"
    assert SweepResult(rows[:2]).claim()["holds_at"] == []
    none = SweepResult([rows[0], rows[1], rows[4]]).claim()
    assert none["best"] is None and none["text"].startswith("does not hold")


def test_sweep_section_and_figure(tiny_sweep) -> None:
    from conceptlens.report.base import Section
    from conceptlens.report.sections.sweep import sweep_figure, sweep_section
    from conceptlens.workflows.sweep import SweepResult

    res, _ = tiny_sweep
    s = sweep_section(res)
    assert isinstance(s, Section) and s.title == "FACE λ sweep" and set(s.images) == {"face_sweep.png"}
    assert s.html.count("<tr>") == 1 + len(res.rows) and "img/face_sweep.png" in s.html
    assert "tiny &lt;world&gt;" in s.html and "<world>" not in s.html  # user text is escaped
    # λ = 0 sits at the left edge, 1.5 decades before the smallest positive λ, labelled "0".
    rows = [_row("face", v) for v in (0.0, 1e-5, 1e-3, 10.0)]
    fig = sweep_figure([SweepResult(rows)])
    ax = fig.axes[0]
    ticks = list(ax.get_xticks())
    assert ticks[0] == pytest.approx(-6.5) and ax.get_xticklabels()[0].get_text() == "0"
    assert ax.get_xlim()[0] < ticks[0] < -5 < ticks[1] + 1e-9


# ------------------------------------------------------------------ held-out images, plain codes (#20 item 4)
def _nnls_codes(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Oracle codes: scipy's NNLS of every row of ``A [N, *S, C]`` on the rows of ``W [k, C]``."""
    from scipy.optimize import nnls

    Wt = W.double().numpy().T
    rows = [torch.from_numpy(nnls(Wt, a)[0]) for a in A.reshape(-1, A.shape[-1]).double().numpy()]
    return torch.stack(rows).reshape(*A.shape[:-1], W.shape[0]).to(A.dtype)


def _by_hand(head, A_score, A_rank, U_score, U_rank, W, c, sel_score, sel_rank) -> dict[str, float]:
    """FACE's numbers of ``A_score ≈ U_score W``, concepts ranked by Sobol on ``U_rank[sel_rank]``."""
    from conceptlens.importance.sobol import concept_total_indices
    from conceptlens.metrics.face import accuracy_deletion, accuracy_insertion

    imp = concept_total_indices(U_rank[sel_rank], W, head, c, n_designs=16, seed=0, n_boot=0,
                                progress=False).indices
    with torch.no_grad():
        A_hat = U_score @ W
        acc = float((head(A_hat[sel_score]).argmax(1) == c).double().mean())
    return {"accuracy": acc, "mse": float((A_score - A_hat).double().square().mean()),
            "c_ins": accuracy_insertion(head, U_score, W, imp, c, images=sel_score),
            "c_del": accuracy_deletion(head, U_score, W, imp, c, images=sel_score)}


@pytest.fixture(scope="module")
def held_out_sweep(face_toy):
    from conceptlens.workflows.sweep import face_sweep

    A, head = face_toy
    c = int(head(A).argmax(1).mode().values)
    return face_sweep(A, head, c, (1.0,), n_concepts=3, n_designs=16, references=("ice",), max_iter=40), c


def test_split_is_seeded_stratified_and_disjoint(held_out_sweep, face_toy) -> None:
    A, head = face_toy
    res, _ = held_out_sweep
    fit, held = (torch.tensor(res.config["split"][key]) for key in ("fit", "held_out"))
    assert not set(fit.tolist()) & set(held.tolist())
    assert sorted(fit.tolist() + held.tolist()) == list(range(A.shape[0]))
    assert res.config["holdout"] == 0.5 and res.config["n_held_out_images"] == held.numel()
    pred = head(A).argmax(1)
    for v in pred.unique().tolist():  # half of each predicted class is held out
        assert int((pred[held] == v).sum()) == round(int((pred == v).sum()) / 2)


def test_headline_numbers_are_plain_codes_of_held_out_images(held_out_sweep, face_toy) -> None:
    """Oracle: refit on the fit images, scipy NNLS codes, Sobol ranking on the fit images' codes."""
    from conceptlens.decompose.face import FACE
    from conceptlens.decompose.nmf import NMF

    A, head = face_toy
    res, c = held_out_sweep
    fit, held = (torch.tensor(res.config["split"][key]) for key in ("fit", "held_out"))
    A_fit, A_held = A[fit], A[held]
    sel_fit = torch.nonzero(head(A_fit).argmax(1) == c).flatten()
    sel_held = torch.nonzero(head(A_held).argmax(1) == c).flatten()
    banks = {"ice": NMF(n_concepts=3, seed=0).fit(A_fit),
             "face": FACE(n_concepts=3, kl_weight=1.0, seed=0, max_iter=40, head=head).fit(A_fit)}
    for row in res.rows:
        W = banks[row["method"]].components_
        want = _by_hand(head, A_held, A_fit, _nnls_codes(A_held, W), _nnls_codes(A_fit, W), W, c, sel_held,
                        sel_fit)
        assert row["accuracy"] == want["accuracy"], row["method"]
        assert row["c_ins"] == pytest.approx(want["c_ins"], abs=1e-9), row["method"]
        assert row["c_del"] == pytest.approx(want["c_del"], abs=1e-9), row["method"]
        assert row["mse"] == pytest.approx(want["mse"], rel=1e-4), row["method"]
        assert row["n_images"] == sel_held.numel()


def test_kl_fitted_numbers_are_a_labelled_extra(held_out_sweep, face_toy) -> None:
    from conceptlens.decompose.face import FACE
    from conceptlens.workflows.sweep_result import CODES_NOTE, COLUMNS, SweepResult

    A, head = face_toy
    res, c = held_out_sweep
    face = res.face_rows()[0]
    # The extra is what earlier versions reported as the headline: the KL-fitted codes of the fit images.
    fit = torch.tensor(res.config["split"]["fit"])
    d = FACE(n_concepts=3, kl_weight=1.0, seed=0, max_iter=40, head=head)
    U = d.fit_encode(A[fit])
    sel = torch.nonzero(head(A[fit]).argmax(1) == c).flatten()
    want = _by_hand(head, A[fit], A[fit], U, U, d.components_, c, sel, sel)
    assert face["fitted_accuracy"] == want["accuracy"] == 1.0
    assert face["fitted_c_ins"] == pytest.approx(want["c_ins"], abs=1e-9)
    # ... and it is not the headline: on this toy the KL-fitted codes keep every prediction, new images not.
    assert face["accuracy"] < face["fitted_accuracy"]
    headers = {col.key: col.header for col in COLUMNS}
    assert all(headers[f"fitted_{m}"].startswith("KL-fitted") for m in ("accuracy", "c_ins", "c_del"))
    assert not any(h.startswith("KL-fitted") for key, h in headers.items() if not key.startswith("fitted_"))
    assert CODES_NOTE in res.markdown() and "KL-fitted: accuracy" in res.table()
    # The claim is judged on the headline only: changing the extra changes no verdict.
    inflated = SweepResult([{**r, "fitted_accuracy": 1.0, "fitted_c_ins": 1.0} for r in res.rows])
    assert inflated.claim() == SweepResult(res.rows).claim()


def test_holdout_zero_scores_the_fitted_images_and_tiny_classes_are_refused(face_toy) -> None:
    from conceptlens.workflows.sweep import face_sweep

    A, head = face_toy
    pred = head(A).argmax(1)
    c = int(pred.mode().values)
    res = face_sweep(A, head, c, (0.0,), n_concepts=3, n_designs=16, references=(), holdout=0.0, max_iter=5)
    assert res.config["split"]["fit"] == res.config["split"]["held_out"] == list(range(A.shape[0]))
    one = torch.cat([torch.nonzero(pred != c).flatten(), torch.nonzero(pred == c).flatten()[:1]])
    with pytest.raises(TargetError, match="at least 2"):
        face_sweep(A[one], head, c, (0.0,), n_concepts=3, references=())
    with pytest.raises(ParameterError, match="holdout"):
        face_sweep(A, head, c, (0.0,), n_concepts=3, references=(), holdout=1.5)


def test_same_seed_same_numbers_other_seed_other_split(face_toy) -> None:
    from conceptlens.workflows.sweep import face_sweep

    A, head = face_toy
    c = int(head(A).argmax(1).mode().values)
    kw = dict(n_concepts=3, n_designs=16, references=("ice",), max_iter=5)
    a, b, other = (face_sweep(A, head, c, (0.5,), seed=s, **kw) for s in (0, 0, 1))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.rows]
    assert a.config["split"] == b.config["split"] != other.config["split"]


def test_fits_side_by_side_in_worker_threads_give_the_sequential_rows(face_toy, monkeypatch) -> None:
    # FACE declares fit_threads = 1: the sweep fits its λ values in worker threads (one intra-op thread
    # each); every number must be the one the fits give one after the other
    from conceptlens import _threads
    from conceptlens.workflows import sweep
    from conceptlens.workflows.sweep import face_sweep

    A, head = face_toy
    c = int(head(A).argmax(1).mode().values)
    kw: dict = dict(n_concepts=3, n_designs=16, max_iter=8)
    calls: list[int] = []

    def two_workers(fits):
        calls.append(len(fits))
        return _threads.one_thread_each(fits, workers=2)

    def one_after_the_other(fits):
        with _threads.threads(1):
            return [f() for f in fits]

    kw["references"] = ("ice",)  # the reference rows run beside the fits too
    monkeypatch.setattr(sweep, "one_thread_each", one_after_the_other)
    seq = face_sweep(A, head, c, (0.1, 1.0, 3.0), **kw)
    monkeypatch.setattr(sweep, "one_thread_each", two_workers)
    par = face_sweep(A, head, c, (0.1, 1.0, 3.0), **kw)
    assert calls == [4]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in seq.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in par.rows]
    assert [(r["method"], r["kl_weight"]) for r in par.rows] == [("ice", 0.0), ("face", 0.1), ("face", 1.0),
                                                                  ("face", 3.0)]


def test_a_swept_method_with_its_own_threads_fits_in_the_calling_thread(face_toy, monkeypatch) -> None:
    # a swept method that does not declare fit_threads = 1 is fitted with the process's threads, in the
    # calling thread, the rows measured in one thread: the same rows as the side-by-side path
    from conceptlens import _threads
    from conceptlens.decompose import get
    from conceptlens.workflows import sweep
    from conceptlens.workflows.sweep import face_sweep

    A, head = face_toy
    c = int(head(A).argmax(1).mode().values)
    kw: dict = dict(n_concepts=3, n_designs=16, max_iter=8, references=("ice",))
    with _threads.threads(1):
        side = face_sweep(A, head, c, (0.1, 1.0), **kw)
        monkeypatch.setattr(get("face"), "fit_threads", None)
        monkeypatch.setattr(sweep, "one_thread_each", lambda fits: pytest.fail("no workers expected"))
        own = face_sweep(A, head, c, (0.1, 1.0), **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in side.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in own.rows]
