"""Presets: how a model wants its input (square size, per-channel mean and std, class names).

Every image conceptlens loads is resized to ``S × S`` (``Preset.size``) and normalised as
``(x01 − mean) / std``; ``Preset.classes`` names the model's outputs. Models from the zoo carry theirs as
``model.preset``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conceptlens.errors import ParameterError

__all__ = ["Preset", "DEFAULT_PRESET"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """How a model wants its input: square size, per-channel mean and std, class names.

    Parameters
    ----------
    size
        Side ``S`` of the square input in pixels.
    mean, std
        Per-channel (R, G, B) mean and standard deviation of the normalisation
        ``x = (x01 − mean) / std`` applied to images in [0, 1].
    classes
        Class names, index ``i`` = output logit ``i`` (may be empty when unknown).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1:
            raise ParameterError(f"Preset.size must be a positive integer, got {self.size!r}.")
        mean = _three_floats("mean", self.mean)
        std = _three_floats("std", self.std)
        if any(s <= 0 for s in std):
            raise ParameterError(f"Preset.std must be > 0 for every channel, got {std}.")
        classes = self.classes
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise ParameterError(
                f"Preset.classes must be a list of class names, got {type(classes).__name__}."
            )
        # Frozen dataclass: normalise field types once so that equality and JSON round trips are exact.
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "classes", [str(c) for c in classes])

    def __hash__(self) -> int:  # the generated hash would fail on the ``classes`` list
        return hash((self.size, self.mean, self.std, tuple(self.classes)))

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim < 3 or x.shape[-3] != 3:
            raise ParameterError(
                f"expected images [N,3,H,W] or [3,H,W] with 3 colour channels, got shape {tuple(x.shape)}."
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(3, 1, 1)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise images in [0, 1]: ``(x − mean) / std``.

        Parameters
        ----------
        x
            ``[N, 3, H, W]`` or ``[3, H, W]``, values in [0, 1].

        Returns
        -------
        torch.Tensor
            Same shape, device and (floating) dtype as ``x``.
        """
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`normalize`: ``x · std + mean``, clamped to [0, 1] for display.

        Parameters
        ----------
        x
            ``[N, 3, H, W]`` or ``[3, H, W]`` normalised images.

        Returns
        -------
        torch.Tensor
            Same shape, values in [0, 1].
        """
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``size``, ``mean``, ``std``, ``classes``)."""
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        """Inverse of :meth:`to_dict`; raises :class:`ParameterError` on missing or unknown keys."""
        if not isinstance(d, dict):
            raise ParameterError(f"a preset must be a dict, got {type(d).__name__}.")
        required = {"size", "mean", "std"}
        allowed = required | {"classes"}
        missing = sorted(required - d.keys())
        unknown = sorted(set(d) - allowed)
        if missing or unknown:
            raise ParameterError(
                f"invalid preset dict: missing keys {missing}, unknown keys {unknown}; "
                f"expected {sorted(allowed)}."
            )
        return cls(
            size=d["size"], mean=tuple(d["mean"]), std=tuple(d["std"]), classes=list(d.get("classes", []))
        )


def _three_floats(name: str, v: Any) -> tuple[float, float, float]:
    try:
        t = tuple(float(a) for a in v)
    except (TypeError, ValueError):
        raise ParameterError(f"Preset.{name} must be 3 numbers (R, G, B), got {v!r}.") from None
    if len(t) != 3 or not all(math.isfinite(a) for a in t):
        raise ParameterError(f"Preset.{name} must be 3 finite numbers (R, G, B), got {v!r}.")
    return t  # type: ignore[return-value]


#: Used when no preset is given: ImageNet statistics at 224 × 224.
DEFAULT_PRESET = Preset(size=224, mean=_IMAGENET_MEAN, std=_IMAGENET_STD)
