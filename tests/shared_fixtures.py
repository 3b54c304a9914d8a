"""Fixtures shared by several test modules (loaded by tests/conftest.py as a pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from face_world import GapMLP, make_world


@pytest.fixture()
def one_thread_unless_slow(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tiny tensors: one intra-op thread (no OpenMP spin-waiting on a busy machine); slow tests keep theirs.

    Use it with ``pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")``.
    """
    n = torch.get_num_threads()
    if request.node.get_closest_marker("slow") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """One intra-op thread for a whole module (FACE's toy world), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def positive_images() -> torch.Tensor:
    """``[3, 3, 16, 16]`` images with every pixel in [0.5, 1.5)."""
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.5


@pytest.fixture(scope="module")
def face_toy() -> tuple[torch.Tensor, GapMLP]:
    """FACE's toy world: activations ``A [N, S, S, C]`` and its GAP + MLP head."""
    return make_world()
