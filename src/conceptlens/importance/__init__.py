"""How much each concept matters to a class: ``linear`` (closed form), ``gradient`` (autograd), ``sobol``.

Each estimator is registered by name (see :mod:`conceptlens.importance.base`); adding one = one new file
here that calls :func:`register`.
"""

from __future__ import annotations

import importlib
import pkgutil

from conceptlens.importance import gradient, linear
from conceptlens.importance.base import Context, Importance, available, get, register

try:  # Sobol needs scipy's quasi-Monte-Carlo designs
    from conceptlens.importance import sobol
except ImportError:  # pragma: no cover - scipy is a hard dependency
    sobol = None  # type: ignore[assignment]

__all__ = ["Context", "Importance", "available", "get", "register", "linear", "gradient", "sobol"]

for _info in pkgutil.iter_modules(__path__):  # each estimator file registers itself when imported
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
