"""Inline SVG charts of the HTML report, written as strings (no matplotlib, no file).

The report's local explanations are drawn here rather than by :func:`~conceptlens.report.figures.local_figure`
+ PNG: a chart is about 4 kB of markup made in about a millisecond, where matplotlib took ~0.2 s to lay
out and rasterise each one. The layout follows ``local_figure`` (the same rows, colours, scale and value
column); text widths are measured with the figures' font (DejaVu Sans, :func:`figures._width`), which is
wider than most system fonts, so a label measured to fit still fits in the page's font.

Coordinates are CSS pixels of the ``viewBox``; the chart scales with its box (``max-width: 100%`` in the
page). Every user string is XML-escaped, so the markup is well-formed XML as well as HTML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape
from typing import Any

from conceptlens._check import minus
from conceptlens.report.base import signed
from conceptlens.report.figures import NEUTRAL, TOTAL, _shorten, _width, local_terms

__all__ = ["local_svg"]

#: The page's body font (templates/index.html), so the chart reads like the text around it.
_FAMILY = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
_WIDTH = 540  # px: the PNG's width (5.4 in at 100 dpi)
_FONT = 16  # px: the page's body size; values 15 px and ticks 14 px, like matplotlib's 12 / 11 pt
_PAD = 8.0
_ROW, _BAR, _GAP = 30.0, 22.0, 15.0  # row pitch, bar height, gap before the residual (half a row)
_GRID = "#dde2e7"  # the page's --line
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not allowed in XML 1.0, even escaped


def _esc(text: Any) -> str:
    """``text`` safe in XML text and attribute values (control characters become U+FFFD)."""
    return escape(_CONTROL.sub("\ufffd", str(text)), quote=True)


def _n(v: float) -> str:
    """A coordinate: 7 significant digits (bar widths keep their ratios to 1e-6)."""
    return f"{v:.7g}"


def _ticks(lo: float, hi: float, most: int) -> list[float]:
    """Round values in ``[lo, hi]`` (``lo < hi``), at most ``most + 1``: 1, 2, 2.5 or 5 × 10^n apart."""
    raw = (hi - lo) / most
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [i * step for i in range(first, last + 1)]


def _tick_text(ticks: Sequence[float]) -> list[str]:
    """Tick labels: up to 6 significant digits, no float noise (0.30000000000000004), a true minus sign."""
    return [minus(f"{round(t, 12) + 0.0:.6g}") for t in ticks]  # + 0.0: no "−0"


def local_svg(
    contributions: Any,
    labels: Sequence[str],
    *,
    residual: float,
    bias: float,
    logit: float,
    title: str = "",
    alt: str | None = None,
) -> str:
    """How one image's target logit is made, as an inline SVG bar chart (the report's local explanation).

    The same chart as :func:`~conceptlens.report.figures.local_figure`: one bar per concept (blue when it
    raises the logit, red when it lowers it), a gap, then the residual and the bias (grey) and the logit
    (dark); labels on the left, each signed value in a right-hand column, a zero line.

    Parameters
    ----------
    contributions
        ``[k]`` concept contributions ``score × weight``, in the order they should be drawn (top first).
    labels
        ``k`` concept names (shortened with "…" when longer than about half the chart).
    residual, bias, logit
        The other terms; ``Σ contributions + residual + bias = logit`` (the caller's identity: the chart
        draws the numbers it is given).
    title
        Written above the bars, left-aligned (shortened to fit).
    alt
        The chart's accessible name (``aria-label`` and ``<title>``); default: a description from ``k``
        and ``title``.

    Returns
    -------
    str
        One ``<svg>`` element (``role="img"``, ``width``/``height`` and a ``viewBox``), every user string
        escaped: well-formed XML, ready to insert into HTML as it is.
    """
    vals, rows, colors = local_terms(contributions, labels, residual, bias, logit)
    k = vals.shape[0] - 3
    most = 0.55 * _WIDTH - 2 * _PAD  # a label takes at most about half the chart
    names = [_shorten(t, most, _FONT) for t in rows]
    value_text = [signed(float(v)) for v in vals]

    # horizontal layout: labels | bars | values (as local_figure's _fixed_layout)
    left = max(_width(t, _FONT) for t in names) + 2 * _PAD
    right = _WIDTH - min(0.3 * _WIDTH, max(_width(t, _FONT) for t in value_text) + 2 * _PAD)
    lo, hi = float(min(vals.min(), 0.0)), float(max(vals.max(), 0.0))
    pad = 0.04 * (hi - lo if hi > lo else 1.0)
    x_lo, x_hi = lo - pad, hi + pad
    scale = (right - left) / (x_hi - x_lo)

    def x_of(v: float) -> str:
        return _n(left + (v - x_lo) * scale)

    # vertical layout: title, rows (a gap before the residual), tick labels, the axis note
    top = _PAD + _FONT / 2 + (1.6 * _FONT if title else 0.0)
    mid = [top + _ROW * (r + 0.5) + (_GAP if r >= k else 0.0) for r in range(k + 3)]
    bottom = top + _ROW * (k + 3) + _GAP
    height = math.ceil(bottom + 2.8 * _FONT + _PAD)
    ticks = _ticks(x_lo, x_hi, 5)
    if len(ticks) > 1 and max(_width(t, 14) for t in _tick_text(ticks)) + 8 > (ticks[1] - ticks[0]) * scale:
        ticks = _ticks(x_lo, x_hi, 2)  # long tick labels: fewer of them
    sep = (mid[k - 1] + mid[k]) / 2 if k else top + _GAP / 2
    note = "contribution to the logit"  # centred under the bars where it fits, else under the chart
    cx = (left + right) / 2 if _width(note, _FONT) <= right - left else _WIDTH / 2

    name = _esc(alt if alt is not None else
                f"Contributions of {k} concepts, the residual and the bias to the logit"
                + (f": {title}" if title else ""))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{name}" '
           f'width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}" '
           f'font-family="{_esc(_FAMILY)}" font-size="{_FONT}" fill="{TOTAL}"><title>{name}</title>']
    if title:
        out.append(f'<text class="title" x="{_PAD:g}" y="{_PAD + _FONT:g}">'
                   f"{_esc(_shorten(title, _WIDTH - 2 * _PAD, _FONT))}</text>")
    out.append(f'<g class="grid" stroke="{_GRID}">')
    out += [f'<line x1="{x_of(t)}" y1="{_n(top)}" x2="{x_of(t)}" y2="{_n(bottom + 4)}"/>' for t in ticks]
    bars, label_text, values = [], [], []
    for v, y, color, label, value in zip(vals, mid, colors, names, value_text, strict=True):
        bars.append(f'<rect x="{x_of(min(float(v), 0.0))}" y="{_n(y - _BAR / 2)}" '
                    f'width="{_n(abs(float(v)) * scale)}" height="{_BAR:g}" fill="{color}"/>')
        label_text.append(f'<text x="{_n(left - _PAD)}" y="{_n(y)}" dy="0.35em">{_esc(label)}</text>')
        values.append(f'<text x="{_n(right + _PAD)}" y="{_n(y)}" dy="0.35em">{value}</text>')
    out += ['</g><g class="bars">', *bars, "</g>"]
    out.append(f'<path class="axes" d="M{_n(left)} {_n(top)}V{_n(bottom)}H{_n(right)}" fill="none" '
               f'stroke="{TOTAL}"/>')
    out.append(f'<line class="separator" x1="{_n(left)}" y1="{_n(sep)}" x2="{_n(right)}" y2="{_n(sep)}" '
               f'stroke="{NEUTRAL}" stroke-dasharray="1 3"/>')
    out.append(f'<line class="zero" x1="{x_of(0.0)}" y1="{_n(top)}" x2="{x_of(0.0)}" y2="{_n(bottom)}" '
               f'stroke="{TOTAL}"/>')
    out += ['<g class="labels" text-anchor="end">', *label_text, "</g>"]
    out += ['<g class="values" font-size="15" style="font-variant-numeric:tabular-nums">', *values, "</g>"]
    out.append('<g class="ticks" font-size="14" text-anchor="middle">')
    out += [f'<text x="{x_of(t)}" y="{_n(bottom + 20)}">{s}</text>'
            for t, s in zip(ticks, _tick_text(ticks), strict=True)]
    out.append(f'</g><text class="xlabel" x="{_n(cx)}" y="{_n(bottom + 2.5 * _FONT + 2)}" '
               f'text-anchor="middle">{note}</text></svg>')
    return "".join(out)
