"""What every part of the report shares: the :class:`Section` and the short text helpers of its markup.

:mod:`conceptlens.report.html` lays out the page; each module of :mod:`conceptlens.report.sections` builds
one :class:`Section` from plain results. Both import this module and never each other, so the report
package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conceptlens._check import minus

__all__ = ["Section", "short", "signed"]


@dataclass(frozen=True)
class Section:
    """An extra section of the report (after the built-in ones).

    Attributes
    ----------
    title : str
        Heading (escaped) and table-of-contents entry.
    html : str
        The section's body, inserted **as is** (trusted markup; escape any user text in it yourself).
    anchor : str | None
        The ``id`` of the section (default: made from the title, unique on the page).
    images : Mapping[str, Any]
        PNG files to write to ``img/`` first: file name (``"tree.png"``; letters, digits, ``_ . -``) →
        a matplotlib ``Figure`` or a picture ``[H,W,3]`` (float in [0, 1] or uint8). Refer to them in
        ``html`` as ``img/<name>``.
    """

    title: str
    html: str
    anchor: str | None = None
    images: Mapping[str, Any] = field(default_factory=dict)


def short(s: str, n: int = 22) -> str:
    """``s`` cut to ``n`` characters, the last one an ellipsis when it was longer."""
    return s if len(s) <= n else s[: n - 1] + "…"


def signed(v: float) -> str:
    """A number with its sign, 3 significant digits and a true minus sign (``+0.12``, ``−3.4``)."""
    return minus(f"{v:+.3g}")
