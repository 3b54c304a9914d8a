"""Shared fixtures: the real model and the real photos are loaded once per test session, the world CNN is
trained (or read from its cache) at most once per run; every test that uses one of them is marked ``slow``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import conceptlens as cl
from helpers import TinyNet

pytest_plugins = ["shared_fixtures"]

#: Fixtures that load the real model or the world CNN: a test that uses one (directly or through another
#: fixture) is a ``slow`` test, whatever its own markers say.
HEAVY_FIXTURES = frozenset({"lite0", "lite0_split", "photos", "photo_acts", "world_model"})


@pytest.fixture
def two_threads():
    """The block at two intra-op threads (the count of the machine the thread choices were measured on)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def lite0() -> nn.Module:
    return cl.models.load("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite0_split(lite0: nn.Module) -> cl.ModelSplit:
    return cl.ModelSplit(lite0, "auto")


@pytest.fixture(scope="session")
def photos(lite0: nn.Module) -> torch.Tensor:
    return cl.data.sample_images(lite0.preset)[:6]


@pytest.fixture(scope="session")
def photo_acts(lite0_split: cl.ModelSplit, photos: torch.Tensor) -> torch.Tensor:
    return lite0_split.g(photos)


@pytest.fixture(scope="session")
def world_model() -> nn.Module:
    """The concept world's CNN (``trained_model(seed=0)``), trained at most once per test run.

    It lives in the default cache (``$CONCEPTLENS_CACHE``, else ``~/.cache/conceptlens``), the one the
    library's own callers (the leaderboard, the masks benchmark, the world sweep) read, so that they load
    this file instead of training again. Tests that use it are ``slow``.
    """
    from conceptlens.world.cnn import trained_model

    return trained_model(seed=0, progress=False)


@pytest.fixture()
def tiny() -> TinyNet:
    return TinyNet()


@pytest.fixture()
def tiny_images() -> torch.Tensor:
    return torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
