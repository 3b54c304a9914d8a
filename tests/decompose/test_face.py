"""FACE (KL-regularised NMF) and its metrics on tiny worlds with a known structure.

The world: activations ``A = U* W*`` built from 6 non-negative parts of decreasing energy, and a
GAP + MLP head that reads mostly the *low-energy* parts. A rank-3 NMF keeps the high-energy parts and
loses what the head looks at, so the KL term has something to fix.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.decompose import get
from conceptlens.decompose.face import FACE, KLTerm, face_objective
from conceptlens.decompose.nmf import NMF, nndsvd_init
from conceptlens.errors import HeadError, ParameterError, TargetError
from conceptlens.metrics.face import (
    c_del,
    c_gini,
    c_ins,
    deletion_curve,
    insertion_curve,
    matched_cosine,
    reconstruction_accuracy,
    sparsity,
    stability,
    sweep,
)

N, S, C, KT, K = 48, 3, 12, 6, 4


class GapMLP(nn.Module):
    """``[B, h, w, C] → [B, K]``: global average pool, then a small tanh MLP."""

    def __init__(self, W_true: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        # First layer reads the three low-energy parts (rows 3..5 of W*), plus a little of everything.
        mix = torch.randn(16, 3, generator=g, dtype=torch.float64)
        w1 = 4.0 * mix @ W_true[3:].double() + 0.1 * torch.randn(16, C, generator=g, dtype=torch.float64)
        self.l1 = nn.Linear(C, 16).to(dtype)
        self.l2 = nn.Linear(16, K).to(dtype)
        with torch.no_grad():
            self.l1.weight.copy_(w1)
            self.l1.bias.zero_()
            self.l2.weight.copy_(torch.randn(K, 16, generator=g, dtype=torch.float64))
            self.l2.bias.zero_()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(a.mean((1, 2)))))


def make_world(seed: int = 0, dtype: torch.dtype = torch.float32, n: int = N) -> tuple[torch.Tensor, GapMLP]:
    g = torch.Generator().manual_seed(seed)
    W_true = torch.rand(KT, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 2
    energy = torch.linspace(2.0, 0.3, KT, dtype=torch.float64)
    U_true = torch.rand(n, S, S, KT, generator=g, dtype=torch.float64) ** 3 * energy
    head = GapMLP(W_true, dtype)
    return (U_true @ W_true).to(dtype), head


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the second thread
    # makes every small kernel wait (measured: 25× slower); restore the setting afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world() -> tuple[torch.Tensor, GapMLP]:
    return make_world()


@pytest.fixture(scope="module")
def nmf_fit(world) -> tuple[torch.Tensor, torch.Tensor]:
    A, _ = world
    d = NMF(3, seed=0, tol=1e-5)  # converged: FACE at λ = 0 must reach NMF's optimum
    U = d.fit_encode(A)
    return U, d.components_


@pytest.fixture(scope="module")
def face_fit(world) -> FACE:
    A, head = world
    return FACE(3, kl_weight=0.05, head=head, seed=0).fit(A)


# ------------------------------------------------------------------------------------------------ FACE
def test_registered_and_head_protocol(world) -> None:
    A, head = world
    assert get("face") is FACE and FACE.nonnegative and FACE.needs_head
    d = FACE(3, kl_weight=1.0)
    assert d.set_head(head) is d and d.head is head
    p = d.get_params()
    assert "head" not in p and p["kl_weight"] == 1.0 and p["n_concepts"] == 3


def test_default_nmf_on_this_slowly_converging_toy_ends_within_1pc(world) -> None:
    # k = 3 on 432 × 12 converges slowly (~150 iterations): the default stopping rule must not stop on the
    # way (tol = 1e-3 stops it after 31 iterations, 4 % above)
    A, _ = world
    converged = NMF(3, seed=0, tol=0.0, max_iter=1000).fit(A).reconstruction_err_
    d = NMF(3, seed=0).fit(A)
    assert d.reconstruction_err_ <= 1.01 * converged
    assert NMF(3, seed=0, tol=1e-3).fit(A).reconstruction_err_ > 1.03 * converged


def test_lambda_zero_is_nmf(world, nmf_fit) -> None:
    A, head = world
    U0, W0 = nmf_fit
    nmf_obj = face_objective(A, U0, W0, head, 0.0)
    d = FACE(3, kl_weight=0.0, head=head, seed=0)
    U = d.fit_encode(A)
    assert abs(d.objective_["total"] - nmf_obj["total"]) <= 0.01 * nmf_obj["total"]
    # The reported objective is the objective of the returned factors.
    again = face_objective(A, U, d.components_, head, 0.0)
    assert again["total"] == pytest.approx(d.objective_["total"], rel=1e-4)


@pytest.mark.parametrize("lam", [0.05, 1.0])
def test_kl_below_nmf_and_objective_monotone(world, nmf_fit, lam) -> None:
    A, head = world
    U0, W0 = nmf_fit
    nmf_obj = face_objective(A, U0, W0, head, lam)
    d = FACE(3, kl_weight=lam, head=head, seed=0)
    U = d.fit_encode(A)
    assert d.objective_["kl"] <= nmf_obj["kl"]
    assert d.objective_["total"] < nmf_obj["total"]
    # The KL term has something to fix in this world: FACE removes a good part of it.
    assert d.objective_["kl"] < 0.8 * nmf_obj["kl"]
    tot = torch.tensor([e["total"] for e in d.history_], dtype=torch.float64)
    assert len(tot) > 2
    assert bool((tot[1:] <= tot[:-1] * (1 + 1e-6)).all()), "objective increased"
    assert float(U.min()) >= 0 and float(d.components_.min()) >= 0
    assert {"iter", "mse", "kl", "total", "time"} <= set(d.history_[0])


def test_same_seed_same_bank(world) -> None:
    A, head = world
    a = FACE(3, kl_weight=0.05, head=head, seed=3).fit(A).components_
    b = FACE(3, kl_weight=0.05, head=head, seed=3).fit(A).components_
    assert torch.equal(a, b)


def test_kl_gradient_matches_finite_differences() -> None:
    A, head = make_world(dtype=torch.float64, n=6)
    g = torch.Generator().manual_seed(5)
    k = 3
    U = torch.rand(6, S, S, k, generator=g, dtype=torch.float64)
    W = torch.rand(k, C, generator=g, dtype=torch.float64)
    term = KLTerm(head, A, batch_images=4)  # two batches: the sum over batches is exact
    _, gA = term.value_and_grad(U @ W)
    gU = gA @ W.T  # the chain rule the solver uses: ∂ΣKL/∂U = (∂ΣKL/∂Â) Wᵀ
    gW = U.reshape(-1, k).T @ gA.reshape(-1, C)
    eps = 1e-6
    for _ in range(3):
        V = torch.randn(U.shape, generator=g, dtype=torch.float64)
        fd = (term.value((U + eps * V) @ W).sum() - term.value((U - eps * V) @ W).sum()) / (2 * eps)
        assert float(fd) == pytest.approx(float((gU * V).sum()), rel=1e-6, abs=1e-10)
        V = torch.randn(W.shape, generator=g, dtype=torch.float64)
        fd = (term.value(U @ (W + eps * V)).sum() - term.value(U @ (W - eps * V)).sum()) / (2 * eps)
        assert float(fd) == pytest.approx(float((gW * V).sum()), rel=1e-6, abs=1e-10)


def test_encode_new_images_nonnegative_and_kl_aware(world, face_fit) -> None:
    A, head = world
    A_new, _ = make_world(seed=7, n=10)
    d = face_fit
    U_kl = d.encode(A_new)
    d.encode_kl_steps = 0
    try:
        U_nnls = d.encode(A_new)
    finally:
        d.encode_kl_steps = 10
    assert U_kl.shape == (10, S, S, 3) and float(U_kl.min()) >= 0 and float(U_nnls.min()) >= 0
    # NNLS codes are optimal for the Frobenius part; the KL steps then lower the full objective.
    obj_kl = face_objective(A_new, U_kl, d.components_, head, d.kl_weight)
    obj_nnls = face_objective(A_new, U_nnls, d.components_, head, d.kl_weight)
    assert obj_kl["total"] < obj_nnls["total"] and obj_kl["kl"] < obj_nnls["kl"]
    # Rows without image structure: plain NNLS, still non-negative.
    rows = d.encode(A_new.reshape(-1, C))
    assert rows.shape == (10 * S * S, 3) and float(rows.min()) >= 0


class _Detached(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(a.detach())


def _no_grad_head(head: nn.Module):
    def h(a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head(a)

    return h


def _argmax_head(head: nn.Module):
    def h(a: torch.Tensor) -> torch.Tensor:
        logits = head(a)
        return torch.nn.functional.one_hot(logits.argmax(1), K).to(a.dtype) + 0 * logits.detach()

    return h


def _half_detached(head: nn.Module):
    # Has a grad_fn but no dependence on A: the gradient is identically zero.
    def h(a: torch.Tensor) -> torch.Tensor:
        return head(a.detach()) + 0.0 * a.sum()

    return h


@pytest.mark.parametrize("wrap", [_Detached, _no_grad_head, _argmax_head, _half_detached])
def test_non_differentiable_head_is_a_head_error(world, wrap) -> None:
    A, head = world
    with pytest.raises(HeadError, match="differentiab"):
        FACE(3, kl_weight=0.1, head=wrap(head)).fit(A)


def test_missing_or_broken_head(world) -> None:
    A, head = world
    with pytest.raises(HeadError, match="split.h"):
        FACE(3).fit(A)
    with pytest.raises(HeadError, match=r"shape \[2, 12\]"):  # rows instead of images
        FACE(3, head=head).fit(A.reshape(-1, C))
    with pytest.raises(HeadError, match=r"logits \[B, K\]"):
        FACE(3, head=lambda a: a.sum()).fit(A)
    with pytest.raises(cl.ConceptLensError):
        FACE(3, head=head).fit(-A)
    with pytest.raises(ParameterError, match="kl_weight"):
        FACE(3, kl_weight=-1.0, head=head).fit(A)
    with pytest.raises(ParameterError, match="solver"):
        FACE(3, head=head, solver="sgd").fit(A)


def test_ours_beats_adam_at_equal_wall_time(world) -> None:
    A, head = world
    lam, budget = 0.05, 1.0
    FACE(3, kl_weight=lam, head=head, solver="adam", max_iter=2).fit(A)  # warm-up (lazy imports)
    ours = FACE(3, kl_weight=lam, head=head, seed=0, max_time=budget).fit(A)
    adam = FACE(3, kl_weight=lam, head=head, seed=0, solver="adam", max_time=budget).fit(A)
    assert ours.fit_time_ <= adam.fit_time_ + 0.2
    assert ours.objective_["total"] <= adam.objective_["total"]
    assert float(adam.components_.min()) >= 0
    # Adam's objective is not monotone in general, but it does improve on its NNDSVD start.
    assert adam.objective_["total"] < adam.history_[0]["total"]


def test_adam_baseline_is_torch_adam_on_the_authors_loss(world) -> None:
    # Oracle: torch.optim.Adam + autograd on mean MSE + λ·batchmean KL, clamped after each step.
    A, head = world
    lam, steps = 0.05, 60
    d = FACE(3, kl_weight=lam, head=head, solver="adam", max_iter=steps, tol=0.0).fit(A)
    X = A.reshape(-1, C)
    Ut, W = nndsvd_init(X, 3, "nndsvd", 0)
    U = Ut.T.contiguous().requires_grad_(True)
    W = W.clone().requires_grad_(True)
    opt = torch.optim.Adam([U, W], lr=5e-4)
    logp = torch.log_softmax(head(A), 1)
    for _ in range(steps):
        Ah = U @ W
        kl = torch.nn.functional.kl_div(torch.log_softmax(head(Ah.reshape(A.shape)), 1), logp,
                                        reduction="batchmean", log_target=True)
        loss = torch.nn.functional.mse_loss(Ah, X) + lam * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            U.clamp_(min=0)
            W.clamp_(min=0)
    assert d.history_[-1]["total"] == pytest.approx(float(loss.detach()), rel=1e-4)


def test_explainer_attaches_the_head(tiny, tiny_images) -> None:
    split = cl.ModelSplit(tiny, "features.3", probe=tiny_images[:1])  # after the last ReLU: ≥ 0
    ex = cl.ConceptExplainer(split, method="face", n_concepts=3, method_params={"kl_weight": 1.0}).fit(
        tiny_images, target=1
    )
    d = ex.decomposition_
    assert isinstance(d, FACE) and d.head is not None and float(ex.concepts_.min()) >= 0


# ------------------------------------------------------------------------------------------------ metrics
def test_gini_known_values() -> None:
    for n in (2, 5, 10):
        assert c_gini(torch.nn.functional.one_hot(torch.tensor(1), n).double()) == pytest.approx((n - 1) / n)
        assert c_gini(torch.full((n,), 0.3)) == pytest.approx(0.0, abs=1e-12)
    assert c_gini(torch.zeros(4)) == 0.0
    assert c_gini(torch.tensor([-1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.75)  # on |importance|
    # Scale invariant, order invariant.
    v = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert c_gini(3 * v) == pytest.approx(c_gini(v.flip(0)))


def _sum_head(t: float):
    """Class 0 iff the (pooled) sum of the concepts exceeds t; class 1 otherwise."""

    def h(a: torch.Tensor) -> torch.Tensor:
        s = a.mean((1, 2)).sum(-1)
        return torch.stack([s, torch.full_like(s, t)], 1)

    return h


def test_insertion_deletion_on_a_sum_of_concepts() -> None:
    U = torch.tensor([3.0, 2.0, 1.0]).expand(5, 2, 2, 3).clone()
    W = torch.eye(3)
    h = _sum_head(2.5)
    good, bad = torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])
    assert deletion_curve(h, U, W, good, 0).tolist() == [1, 1, 0, 0]
    assert insertion_curve(h, U, W, good, 0).tolist() == [0, 1, 1, 1]
    assert c_del(h, U, W, good, 0) == pytest.approx(2 / 5)
    assert c_ins(h, U, W, good, 0) == pytest.approx(2.5 / 3)
    assert c_del(h, U, W, bad, 0) == pytest.approx(1 / 5)
    assert c_ins(h, U, W, bad, 0) == pytest.approx(1.5 / 3)
    with pytest.raises(TargetError):
        c_del(h, U, W, good, 0, images=torch.zeros(5, dtype=torch.bool))


def test_curves_match_a_loop_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    U = torch.rand(13, 2, 2, 4, generator=g)
    W = torch.rand(4, 5, generator=g)
    lin = torch.randn(5, 3, generator=g)
    h = lambda a: a.mean((1, 2)) @ lin  # noqa: E731
    imp = torch.rand(4, generator=g)
    images = torch.tensor([0, 2, 3, 5, 8, 12])
    order = torch.argsort(imp, descending=True)
    for insert, fn in ((False, deletion_curve), (True, insertion_curve)):
        expect = []
        for i in range(5):
            M = torch.zeros(4) if insert else torch.ones(4)
            M[order[:i]] = 1.0 if insert else 0.0
            pred = h((U[images] * M) @ W).argmax(1)
            expect.append(float((pred == 1).double().mean()))
        got = fn(h, U, W, imp, 1, images=images, batch_size=7)  # several calls of h
        assert got.tolist() == pytest.approx(expect)


def test_reconstruction_accuracy_and_sparsity(world) -> None:
    A, head = world
    assert reconstruction_accuracy(head, A, A) == 1.0
    pred = head(A).argmax(1)
    c = int(pred.mode().values)
    assert reconstruction_accuracy(head, A, A, c) == 1.0
    # All-zero reconstruction: h(0) is one class for every image.
    z = torch.zeros_like(A)
    c0 = int(head(z[:1]).argmax(1))
    assert reconstruction_accuracy(head, A, z) == pytest.approx(float((pred == c0).double().mean()))
    U = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert sparsity(U) == pytest.approx(0.25)


def test_stability_identical_and_permuted_banks() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.rand(5, 8, generator=g)
    assert matched_cosine(W, 3 * W[torch.tensor([4, 2, 0, 1, 3])]) == pytest.approx(1.0)
    sizes = []

    def fit_fn(a: torch.Tensor) -> torch.Tensor:
        sizes.append(a.shape[0])
        return W

    A = torch.arange(11.0).reshape(11, 1, 1, 1)
    assert stability(fit_fn, A) == pytest.approx(1.0)
    assert sorted(sizes) == [8, 9, 9, 9, 9]  # folds of 3, 2, 2, 2, 2 images left out
    # Two different random banks are far from identical.
    banks = iter([torch.rand(5, 8, generator=g) for _ in range(5)])
    assert stability(lambda a: next(banks), A) < 0.99
    with pytest.raises(ParameterError):
        stability(fit_fn, A, n_folds=1)


def test_sweep_on_the_tiny_world(world) -> None:
    A, head = world
    c = int(head(A).argmax(1).mode().values)
    rows = sweep(A, head, c, kl_weights=(0.0, 0.05), n_concepts=3, n_designs=16, with_stability=True,
                 max_iter=50)
    assert [r["kl_weight"] for r in rows] == [0.0, 0.05]
    keys = {"mse", "kl", "accuracy", "c_ins", "c_del", "c_gini", "sparsity", "stability", "time"}
    assert all(keys <= set(r) for r in rows)
    nmf, face = rows
    assert face["kl"] < nmf["kl"] and face["mse"] >= nmf["mse"] * 0.99
    assert 0 <= face["c_ins"] <= 1 and 0 < face["stability"] <= 1 + 1e-9
    assert face["accuracy"] >= nmf["accuracy"]


def test_sweep_over_several_classes_is_the_mean(world) -> None:
    A, head = world
    counts = torch.bincount(head(A).argmax(1), minlength=K)
    c1, c2 = torch.argsort(counts, descending=True)[:2].tolist()
    both = sweep(A, head, [c1, c2], kl_weights=(0.0,), n_concepts=3, n_designs=16)[0]
    one = [sweep(A, head, c, kl_weights=(0.0,), n_concepts=3, n_designs=16)[0] for c in (c1, c2)]
    for key in ("accuracy", "c_ins", "c_del", "c_gini"):
        assert both[key] == pytest.approx((one[0][key] + one[1][key]) / 2)
    assert both["n_images"] == int(counts[c1] + counts[c2])
    with pytest.raises(TargetError):
        sweep(A, head, [c1, K + 1], kl_weights=(0.0,))  # no image is classified as K + 1


# ------------------------------------------------------------------------------------------------ λ sweep
def _tiny_crops(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four 2×2 windows of every image's 3×3 activations, as CRAFT's crops, with their image index."""
    crops = torch.cat([A[:, i : i + 2, j : j + 2] for i in (0, 1) for j in (0, 1)])
    return crops, torch.arange(A.shape[0]).repeat(4)


@pytest.fixture(scope="module")
def tiny_sweep(world):
    from conceptlens.metrics.face import face_sweep

    A, head = world
    c = int(head(A).argmax(1).mode().values)
    crops, index = _tiny_crops(A)
    res = face_sweep(A, head, c, "0, 1", n_concepts=3, n_designs=16, craft_A=crops, craft_index=index,
                     with_stability=True, max_iter=40, config={"dataset": "tiny <world>"})
    return res, c


def test_face_sweep_rows_references_and_kl(tiny_sweep, world) -> None:
    from conceptlens.metrics.face import SWEEP_COLUMNS

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
        assert r["n_images"] == int((world[1](world[0]).argmax(1) == c).sum())  # the class's images
    # CRAFT's bank comes from the crops (one averaged row each), not from the per-position rows.
    assert craft["mse"] != pytest.approx(ice["mse"], rel=1e-3)
    assert res.config["targets"] == [c] and res.config["dataset"] == "tiny <world>"


def test_face_sweep_files_round_trip(tiny_sweep, tmp_path) -> None:
    import csv
    import json

    from PIL import Image

    from conceptlens.metrics.face import SWEEP_COLUMNS, SweepResult

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


def test_face_sweep_validation(world) -> None:
    from conceptlens.metrics.face import face_sweep, parse_kl_weights

    A, head = world
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
            "accuracy_encoded": 0.5, "agreement": 0.5, "c_ins": 0.5, "c_del": 0.3, "c_gini": 0.5,
            "sparsity": 0.5, "stability": 0.8, "seconds": 1.0, "n_iter": 5.0, "n_images": 10.0}
    return {**base, **kw}


def test_claim_verdict_on_known_rows() -> None:
    from conceptlens.metrics.face import SweepResult

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
    from conceptlens.metrics.face import SweepResult, sweep_figure, sweep_section
    from conceptlens.report.html import Section

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


@pytest.mark.slow
def test_bench_face_quick_writes_both_sweeps(tmp_path) -> None:
    import json
    import time

    from conceptlens import bench

    t0 = time.perf_counter()
    bench.run("face", quick=True, out=tmp_path)
    elapsed = time.perf_counter() - t0
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
    # --quick is meant to take < 60 s; the bound is loose because the test machine is shared.
    assert elapsed < 180, elapsed
