"""The display hook: result classes ask for a rendering by name; the report layer provides it.

Classes below the report layer (the explainer's ``_repr_html_``, ``plot_concepts``, ``plot``) may not
import it (the import-linter contract in ``pyproject.toml``). They call :func:`render` with a name;
:mod:`conceptlens.report.display` registers one renderer per name with :func:`register` when it is
imported, and :func:`render` imports it on first use (the one provider, named here as a string, the way a
plugin is). Nothing else is ever imported by name.

>>> render("explainer_html", ex)          # → str, the notebook card
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["PROVIDER", "register", "render"]

#: The module that registers the renderers (imported on the first :func:`render`).
PROVIDER = "conceptlens.report.display"
_RENDERERS: dict[str, Callable[..., Any]] = {}


def register(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn(obj, **options)`` the renderer called ``name``."""
    _RENDERERS[name] = fn


def render(name: str, obj: Any, /, **options: Any) -> Any:
    """``renderer(obj, **options)`` for the renderer called ``name`` (an HTML string or a figure)."""
    if name not in _RENDERERS:
        importlib.import_module(PROVIDER)
    if name not in _RENDERERS:
        raise KeyError(f"no renderer {name!r} is registered by {PROVIDER}")
    return _RENDERERS[name](obj, **options)
