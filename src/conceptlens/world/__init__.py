"""The synthetic concept world: images with planted concepts (:mod:`~conceptlens.world.concepts`), the
CNN trained on it (:mod:`~conceptlens.world.cnn`) and the ground-truth leaderboard
(:mod:`~conceptlens.world.leaderboard`, imported on use)."""

from conceptlens.world.cnn import *  # noqa: F403
from conceptlens.world.cnn import __all__ as _cnn_all
from conceptlens.world.concepts import *  # noqa: F403
from conceptlens.world.concepts import __all__ as _concepts_all

__all__ = [*_concepts_all, *_cnn_all]
