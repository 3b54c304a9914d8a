"""Decomposition.fit_threads: every fit / fit_encode runs with the method's declared thread count, restores
the process's count afterwards (also on an error), and a one-thread method gives the same bank whatever the
process's count."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from conceptlens import decompose
from conceptlens.decompose.base import Decomposition
from conceptlens.errors import ParameterError


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


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


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
