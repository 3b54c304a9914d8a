"""The importance registry: how much each concept matters to a class.

Notation: ``U [N, ..., k]`` concept coefficients of the fit images, ``W [k, C]`` the bank (through the
fitted decomposition, whose ``decode`` may add an offset, e.g. PCA's mean), ``h`` the head, ``c`` the
target class.

Every estimator is a function ``fn(ctx: Context) -> Importance`` registered by name. ICE's concept
*weights* (``weights [k]``, the logit change per unit of concept score) are always computed, by the
closed form for a GAP + linear head and by autograd otherwise; an estimator may add a global importance
of its own (e.g. Sobol total indices) in ``values``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from conceptlens._check import lookup

__all__ = ["Context", "Importance", "register", "get", "available"]


@dataclass(frozen=True)
class Context:
    """What an importance estimator may use.

    Attributes
    ----------
    U : torch.Tensor
        ``[N, ..., k]`` coefficients of the fit images.
    decomposition : Any
        The fitted :class:`~conceptlens.decompose.Decomposition` (``decode`` maps ``[..., k] -> [..., C]``).
    split : Any
        The :class:`~conceptlens.split.model_split.ModelSplit` (``h``, ``linear_head()``).
    target : int
        Class index.
    seed : int
    progress : bool | None
    options : dict
        Estimator-specific keyword options (e.g. ``n_designs`` for Sobol).
    """

    U: torch.Tensor
    decomposition: Any
    split: Any
    target: int
    seed: int = 0
    progress: bool | None = None
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class Importance:
    """A global importance of each concept for one class.

    Attributes
    ----------
    values : torch.Tensor
        ``[k]`` importance (larger = more important).
    weights : torch.Tensor
        ``[k]`` ICE concept weights ``∂logit_c / ∂score_j`` (closed form or autograd).
    method : str
        The estimator's name.
    ci_low, ci_high : torch.Tensor | None
        ``[k]`` 95 % confidence bounds of ``values`` when the estimator gives them.
    """

    values: torch.Tensor
    weights: torch.Tensor
    method: str
    ci_low: torch.Tensor | None = None
    ci_high: torch.Tensor | None = None


_REGISTRY: dict[str, Callable[[Context], Importance]] = {}


def register(name: str) -> Callable[[Callable[[Context], Importance]], Callable[[Context], Importance]]:
    """Decorator: make an estimator available as ``importance=name``."""

    def deco(fn: Callable[[Context], Importance]) -> Callable[[Context], Importance]:
        _REGISTRY[name] = fn
        return fn

    return deco


def get(name: str) -> Callable[[Context], Importance]:
    """The estimator registered as ``name``; ParameterError listing the known ones otherwise."""
    return lookup(_REGISTRY, name, "importance")


def available() -> list[str]:
    """Names of the registered importance estimators."""
    return sorted(_REGISTRY)


def concept_directions(decomposition: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D [k, C], offset [C])`` with ``decode(u) = u @ D + offset`` for an affine decode.

    Read off the decomposition by decoding the zero code and the unit codes, so that any affine
    ``decode`` (NMF, PCA with its mean, k-means centroids) is handled without special cases.
    """
    W = decomposition.components_
    k = W.shape[0]
    eye = torch.eye(k, dtype=W.dtype, device=W.device)
    zero = torch.zeros(1, k, dtype=W.dtype, device=W.device)
    offset = decomposition.decode(zero)[0]
    D = decomposition.decode(eye) - offset
    return D, offset
