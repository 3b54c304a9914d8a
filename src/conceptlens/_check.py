"""The one set of argument validators and number formatters (every user error is a ``ParameterError``).

Validators return the checked value (as a plain Python type) so that a caller can write
``steps = check_int("steps", steps, 1)``; their messages name the argument, the rule and the value given.
Formatters turn a number into the text that reports, tables and the terminal show: ``–`` for a missing or
non-finite value, a true minus sign ``−`` in HTML.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from conceptlens.errors import ParameterError, nearest

__all__ = ["check_int", "check_float", "as_float", "is_finite", "fmt", "fmt_pct", "fmt_num", "minus",
           "MISSING", "did_you_mean", "lookup"]

_T = TypeVar("_T")

#: What a table shows for a missing or non-finite number.
MISSING = "–"


def check_int(name: str, value: Any, minimum: int | None = None, *, maximum: int | None = None,
              hint: str = "") -> int:
    """``value`` as an ``int`` when it is an integer (not a bool) within ``[minimum, maximum]``.

    Raises
    ------
    ParameterError
        Naming ``name``, the bound and the value given, followed by ``hint`` when one is given.
    """
    tail = f"; {hint}" if hint else ""
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be an integer, got {value!r}{tail}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ParameterError(f"{name} must be an integer, got {type(value).__name__}{tail}") from None
    if minimum is not None and v < minimum:
        raise ParameterError(f"{name} must be an integer ≥ {minimum}, got {v}{tail}")
    if maximum is not None and v > maximum:
        raise ParameterError(f"{name} must be an integer ≤ {maximum}, got {v}{tail}")
    return int(v)


def check_float(name: str, value: Any, minimum: float | None = None, *, maximum: float | None = None,
                strict_min: bool = False, hint: str = "") -> float:
    """``value`` as a finite ``float`` within the bounds (``strict_min``: ``> minimum``)."""
    tail = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ParameterError(f"{name} must be a number, got {type(value).__name__}{tail}")
    v = float(value)
    if not math.isfinite(v):
        raise ParameterError(f"{name} must be a finite number, got {value!r}{tail}")
    if minimum is not None and (v <= minimum if strict_min else v < minimum):
        raise ParameterError(f"{name} must be {'>' if strict_min else '≥'} {minimum}, got {v}{tail}")
    if maximum is not None and v > maximum:
        raise ParameterError(f"{name} must be ≤ {maximum}, got {v}{tail}")
    return v


def as_float(v: Any) -> float:
    """``float(v)``, or NaN when ``v`` is not a number (None, a string, …)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def is_finite(v: Any) -> bool:
    """True when ``v`` is a finite number."""
    return math.isfinite(as_float(v))


def minus(s: str) -> str:
    """``s`` with ASCII hyphen-minus signs as true minus signs (for HTML and figures)."""
    return s.replace("-", "−")


def fmt(v: Any, digits: int = 3, kind: str = "fixed") -> str:
    """One number as text: ``kind`` is ``"fixed"`` (``0.123``), ``"sig"`` (3 significant digits),
    ``"pct"`` (``12 %``, ``digits`` after the point), ``"bool"`` (yes / no) or ``"str"`` (as is);
    :data:`MISSING` for None and non-finite numbers."""
    if kind == "str":
        return MISSING if v is None else str(v)
    x = as_float(v)
    if not math.isfinite(x):
        return MISSING
    if kind == "pct":
        return f"{100 * x:.{digits}f}\u00a0%"
    if kind == "bool":
        return "yes" if x >= 0.5 else "no"
    if kind == "sig":
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def fmt_pct(v: Any, digits: int = 0) -> str:
    """A fraction as a percentage, ``0.25 → "25 %"`` (non-breaking space)."""
    return fmt(v, digits, "pct")


def fmt_num(v: Any) -> str:
    """A number for a report: 3 significant digits, scientific above 10⁴, true minus sign."""
    x = as_float(v)
    if not math.isfinite(x):
        return MISSING
    return minus(f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}")


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` with the candidate nearest to ``name``, or ``""`` when none is near."""
    hint = nearest(name, candidates)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def lookup(registry: Mapping[str, _T], name: str, what: str, *, key: str | None = None) -> _T:
    """``registry[key]`` (``key`` defaults to ``name``) of a registry of ``what`` (e.g. ``"importance"``).

    Raises
    ------
    ParameterError
        ``unknown {what} {name!r}; available: …``, the sorted names, and the nearest one to ``key``.
    """
    key = name if key is None else key
    if key not in registry:
        raise ParameterError(
            f"unknown {what} {name!r}; available: {', '.join(sorted(registry))}" + did_you_mean(key, registry)
        )
    return registry[key]
