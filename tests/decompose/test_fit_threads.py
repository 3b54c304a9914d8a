"""Decomposition.fit_threads: every fit / fit_encode runs with the method's declared thread count, restores
the process's count afterwards (also on an error), and a one-thread method gives the same bank whatever the
process's count."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from conceptlens import decompose
from conceptlens.decompose.base import Decomposition
from conceptlens.errors import ConvergenceWarning, ParameterError


class _Probe(Decomposition):
    fit_threads: ClassVar[int | None] = 1
    seen: ClassVar[list[int]] = []

    def fit(self, A: torch.Tensor) -> _Probe:
        type(self).seen.append(torch.get_num_threads())
        if A.numel() == 0:
            raise ParameterError("empty")
        self.components_ = torch.ones(1, A.shape[-1])
        return self

    def fit_encode(self, A: torch.Tensor) -> torch.Tensor:
        type(self).seen.append(torch.get_num_threads())
        return self.fit(A).encode(A)

    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        return A.sum(1, keepdim=True)


class _Inherits(_Probe):
    fit_threads: ClassVar[int | None] = None  # the process's count, through the parent's fit


def test_fit_runs_with_the_declared_threads_and_restores(two_threads) -> None:
    _Probe.seen.clear()
    _Probe().fit(torch.ones(4, 3))
    _Probe().fit_encode(torch.ones(4, 3))
    assert _Probe.seen == [1, 1, 1] and torch.get_num_threads() == 2
    with pytest.raises(ParameterError):
        _Probe().fit(torch.ones(0, 3))
    assert torch.get_num_threads() == 2  # restored after an error too
    _Probe.seen.clear()
    _Inherits().fit(torch.ones(4, 3))
    assert _Probe.seen == [2]  # the subclass's declaration counts, not the parent's


def test_small_op_methods_declare_one_thread() -> None:
    one = {m for m in decompose.available() if decompose.get(m).fit_threads == 1}
    assert one >= {"kmeans", "eddp", "face"}
    assert decompose.get("nmf").fit_threads is None and decompose.get("pca").fit_threads is None


def test_one_thread_method_gives_the_same_bank_at_any_process_count(two_threads) -> None:
    A = torch.rand(600, 24, generator=torch.Generator().manual_seed(0))
    two = decompose.get("kmeans")(n_concepts=5, seed=0).fit(A).components_
    torch.set_num_threads(1)
    one = decompose.get("kmeans")(n_concepts=5, seed=0).fit(A).components_
    assert torch.equal(one, two)


def test_warnings_point_at_the_users_line_through_the_thread_wrapper() -> None:
    # the fit_threads wrapper added a frame: a fixed stacklevel pointed at decompose/base.py
    g = torch.Generator().manual_seed(0)
    A = torch.rand(200, 3, generator=g) @ torch.rand(3, 12, generator=g)
    with pytest.warns(ConvergenceWarning) as rec:
        decompose.NMF(3, max_iter=2, seed=0).fit(A); line = _line()  # noqa: E702
    assert [(w.filename, w.lineno) for w in rec] == [(__file__, line)]
    with pytest.warns(RuntimeWarning, match="all-zero") as rec:
        decompose.NMF(2, seed=0).fit_encode(torch.zeros(20, 4)); line = _line()  # noqa: E702
    assert {(w.filename, w.lineno) for w in rec} == {(__file__, line)}


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno


def test_one_thread_each_gives_the_sequential_results_in_order_and_restores_the_count() -> None:
    from conceptlens._threads import one_thread_each, threads

    before = torch.get_num_threads()
    seen: list[int] = []

    def call(i: int) -> float:
        seen.append(torch.get_num_threads())
        g = torch.Generator().manual_seed(i)
        return float((torch.rand(300, 300, generator=g) @ torch.rand(300, 300, generator=g)).sum())

    calls = [lambda i=i: call(i) for i in range(5)]
    with threads(1):  # what a one-thread method gives, one call after the other
        seq = [c() for c in calls]
    seen.clear()
    assert one_thread_each(calls, workers=2) == seq
    assert seen == [1] * 5 and torch.get_num_threads() == before

    def bad() -> float:
        raise ParameterError("second")

    with pytest.raises(ParameterError, match="second"):
        one_thread_each([calls[0], bad, calls[1]], workers=2)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [300, 20])  # tall: eigh of the covariance; wide: the SVD
def test_pca_runs_its_lapack_step_in_one_thread(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    # beside a busy process, eigh with two threads took 1.3-11 s against 1.0-1.4 s with one
    seen: list[int] = []
    for name in ("eigh", "svd"):
        real = getattr(torch.linalg, name)

        def spy(*a, _real=real, **k):  # noqa: ANN002, ANN003, ANN202
            seen.append(torch.get_num_threads())
            return _real(*a, **k)

        monkeypatch.setattr(torch.linalg, name, spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        decompose.PCA(3).fit(torch.rand(n, 40, generator=torch.Generator().manual_seed(0)))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_small_nmf_fit_runs_in_one_thread_a_large_one_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlens.decompose import nmf as nmf_mod

    seen: list[int] = []
    real = nmf_mod.NMF._fit_rows

    def spy(self, A, layer_name):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        return real(self, A, layer_name)

    monkeypatch.setattr(nmf_mod.NMF, "_fit_rows", spy)
    A = torch.rand(100, 20, generator=torch.Generator().manual_seed(0))  # n·C·k = 6,000
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(nmf_mod, "SMALL_FIT", 6_001)
        nmf_mod.NMF(3, seed=0).fit(A)
        nmf_mod.NMF(3, seed=0).fit_encode(A)
        monkeypatch.setattr(nmf_mod, "SMALL_FIT", 6_000)
        nmf_mod.NMF(3, seed=0).fit(A)
        assert seen == [1, 1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
