"""The synthetic concept world: images with planted concepts, its trained CNN, the ground-truth board."""

from conceptlens.world.concepts import *  # noqa: F403
