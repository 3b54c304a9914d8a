"""FACE's metrics (:mod:`conceptlens.metrics.face`) against known values, loop oracles and invariants."""

from __future__ import annotations

import pytest
import torch

from conceptlens.errors import ParameterError, TargetError
from conceptlens.metrics.face import (
    accuracy_deletion,
    accuracy_insertion,
    c_del,
    c_gini,
    c_ins,
    deletion_curve,
    holdout_split,
    insertion_curve,
    matched_cosine,
    reconstruction_accuracy,
    stability,
)
from conceptlens.metrics.ice import sparsity

pytestmark = pytest.mark.usefixtures("one_thread_module")


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
    assert accuracy_deletion(h, U, W, good, 0) == pytest.approx(2 / 5)
    assert accuracy_insertion(h, U, W, good, 0) == pytest.approx(2.5 / 3)
    assert accuracy_deletion(h, U, W, bad, 0) == pytest.approx(1 / 5)
    assert accuracy_insertion(h, U, W, bad, 0) == pytest.approx(1.5 / 3)
    with pytest.raises(TargetError):
        accuracy_deletion(h, U, W, good, 0, images=torch.zeros(5, dtype=torch.bool))


def test_deprecated_c_del_c_ins_warn_and_equal_the_new_names() -> None:
    import conceptlens as cl

    g = torch.Generator().manual_seed(3)
    U = torch.rand(9, 2, 2, 4, generator=g)
    W = torch.rand(4, 5, generator=g)
    lin = torch.randn(5, 3, generator=g)
    h = lambda a: a.mean((1, 2)) @ lin  # noqa: E731
    imp = torch.rand(4, generator=g)
    for old, new in ((c_del, accuracy_deletion), (c_ins, accuracy_insertion)):
        with pytest.warns(DeprecationWarning, match=new.__name__):
            value = old(h, U, W, imp, 1, batch_size=5)
        assert value == new(h, U, W, imp, 1, batch_size=5)
    assert cl.metrics.c_del is c_del and cl.metrics.accuracy_insertion is accuracy_insertion


def test_face_sparsity_is_ices_with_tol_zero() -> None:
    # FACE counts exact non-zeros; ICE's default tolerance ignores |u| <= 1e-8.
    U = torch.tensor([[1.0, 1e-9, 0.0, 2.0]])
    assert sparsity(U, 0.0, dtype=torch.float64) == pytest.approx(0.75)
    assert sparsity(U) == pytest.approx(0.5)
    with pytest.raises(ParameterError, match="empty"):
        sparsity(torch.zeros(0, 3))


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


def test_reconstruction_accuracy_and_sparsity(face_toy) -> None:
    A, head = face_toy
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


def test_holdout_split_is_seeded_stratified_and_disjoint() -> None:
    shuffle = torch.randperm(14, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0] * 7 + [1] * 4 + [2] + [3] * 2)[shuffle]
    fit, held = holdout_split(y, 0.5, seed=0)
    assert not set(fit.tolist()) & set(held.tolist())
    assert sorted(fit.tolist() + held.tolist()) == list(range(14))
    assert fit.tolist() == sorted(fit.tolist()) and held.dtype == torch.long
    # round(m / 2) of each label held out, at least one and never all; a lone image is fitted on
    assert [int((y[held] == v).sum()) for v in range(4)] == [4, 2, 0, 1]
    assert [int((y[fit] == v).sum()) for v in range(4)] == [3, 2, 1, 1]
    assert [int((y[holdout_split(y, 0.01, seed=0)[1]] == v).sum()) for v in range(4)] == [1, 1, 0, 1]
    assert [int((y[holdout_split(y, 0.99, seed=0)[1]] == v).sum()) for v in range(4)] == [6, 3, 0, 1]
    # same seed, same split; another seed, another draw (same sizes)
    assert all(torch.equal(a, b) for a, b in zip(holdout_split(y, 0.5, seed=0), (fit, held), strict=True))
    other = holdout_split(y, 0.5, seed=1)[1]
    assert not torch.equal(other, held) and other.numel() == held.numel()
    for bad in (0.0, 1.0, -0.2, float("nan"), True):
        with pytest.raises(ParameterError):
            holdout_split(y, bad)
    with pytest.raises(ParameterError, match="integer"):
        holdout_split(y.double(), 0.5)
