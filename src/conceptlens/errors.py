"""Every user-facing error of conceptlens, in one place.

Each class is a :class:`ConceptLensError`, so ``except cl.ConceptLensError`` catches any mistake a
user can make. Messages say what was wrong *and* what to do about it.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from collections.abc import Iterable

__all__ = [
    "ConceptLensError",
    "ConceptLensWarning",
    "ConvergenceWarning",
    "DegenerateConceptsWarning",
    "LayerError",
    "ActivationError",
    "StoreError",
    "ImageError",
    "TargetError",
    "ParameterError",
    "NotFittedError",
    "SplitError",
    "ModelError",
    "SavedFileError",
    "OutputError",
    "HeadError",
    "nearest",
    "warn_user",
]


class ConceptLensWarning(UserWarning):
    """Base class of the warnings conceptlens gives about results a user should look at."""


class ConvergenceWarning(ConceptLensWarning):
    """A solver reached its iteration budget before its stopping rule was met."""


class DegenerateConceptsWarning(ConceptLensWarning):
    """Concepts that are never used (all-zero codes) or that duplicate another concept."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = ConceptLensWarning) -> None:
    """Warn at the user's own line: the first caller outside the conceptlens package.

    A fixed ``stacklevel`` points at the wrong line when the call goes through wrappers (the per-method
    thread count wraps every ``fit``) or through another method (FACE starts from NMF).
    """
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class ConceptLensError(Exception):
    """Base class of every error a user of conceptlens can trigger."""


class LayerError(ConceptLensError, KeyError):
    """An unknown or ambiguous layer name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ActivationError(ConceptLensError, ValueError):
    """Activations that a method cannot use (negative for NMF, NaN/Inf, wrong shape)."""


class StoreError(ActivationError):
    """An activation store whose index or shards are malformed, outside the store, or changed on disk."""


class OutputError(ConceptLensError, OSError):
    """A file cannot be written where it was asked to go (a directory, under a file, no permission, full)."""


class ImageError(ConceptLensError, ValueError):
    """Images that cannot be read, or no images at all."""


class TargetError(ConceptLensError, ValueError):
    """A target class index out of range or an unknown class name."""


class ParameterError(ConceptLensError, ValueError):
    """A parameter outside its valid range."""


class NotFittedError(ConceptLensError, RuntimeError):
    """A method that needs a fitted object was called before ``fit``."""


class SplitError(ConceptLensError, RuntimeError):
    """The model cannot be cut at the requested layer (or ``h(g(x)) != model(x)``)."""


class ModelError(ConceptLensError, ValueError):
    """An unknown model name, a missing weights file, or a model that cannot be built."""


class SavedFileError(ConceptLensError, ValueError):
    """A saved file that is truncated, corrupt, tampered with or of an unknown schema."""


class HeadError(ConceptLensError, RuntimeError):
    """A head ``h`` that a method needs to differentiate is not differentiable."""


def nearest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The ``n`` candidates closest to ``name`` (by difflib ratio, then by shared prefix).

    Used by every "unknown X" message so that the user sees what they probably meant.
    """
    cands = list(candidates)
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.3)
    if len(close) < n:
        pref = [c for c in cands if c not in close and (c.startswith(name) or name.startswith(c))]
        close += pref[: n - len(close)]
    return close
