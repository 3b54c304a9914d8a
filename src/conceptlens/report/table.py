"""One table renderer: the same rows and column spec as markdown, CSV, HTML or aligned terminal text.

A :class:`Column` says how one key of the row dicts is shown (header, format, whether larger or smaller is
better); a :class:`Table` renders ``rows`` (a list of dicts) with a list of columns. Every table the
library prints or writes (the comparison, FACE's λ sweep, the ground-truth leaderboard, the benchmarks)
goes through it, so a number looks the same in the README, the report and the terminal.

>>> t = Table([Column("method", "method", kind="str"), Column("fid_c", "Fid_c", kind="pct", digits=0,
...                   better="max")],
...           [{"method": "nmf", "fid_c": 0.9}, {"method": "pca", "fid_c": 1.0}])
>>> print(t.markdown())
| method | Fid_c |
|---|---|
| nmf | 90 % |
| pca | **100 %** |
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from conceptlens._check import MISSING, as_float, fmt, minus

__all__ = ["Column", "Table"]


@dataclass(frozen=True)
class Column:
    """How one key of the rows is shown.

    Attributes
    ----------
    key : str
        The row dicts' key.
    header : str
        Plain-text header (markdown, CSV, terminal).
    kind : str
        A :func:`conceptlens._check.fmt` kind: ``"fixed"``, ``"sig"``, ``"pct"``, ``"bool"`` or ``"str"``.
    digits : int
        Digits of the format.
    better : str or None
        ``"max"`` (larger is better), ``"min"`` or None: the best value of the column is marked.
    html : str or None
        HTML header (may hold markup such as ``Fid<sub>c</sub>``); default: the escaped ``header``.
    only_if : callable or None
        ``row -> bool``: only the rows it accepts compete for the column's best value (None: every row),
        e.g. a number that is only comparable between rows meeting a condition.
    """

    key: str
    header: str
    kind: str = "fixed"
    digits: int = 3
    better: str | None = None
    html: str | None = None
    only_if: Callable[[Mapping[str, Any]], bool] | None = None

    def text(self, row: Mapping[str, Any]) -> str:
        """The cell of ``row`` as text."""
        return fmt(row.get(self.key), self.digits, self.kind)


class Table:
    """``rows`` (dicts) shown through ``columns``; ``best_of`` limits which rows compete for "best"."""

    def __init__(self, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]],
                 best_of: Sequence[int] | None = None) -> None:
        self.columns = list(columns)
        self.rows = [dict(r) for r in rows]
        self.best_of = list(range(len(self.rows))) if best_of is None else list(best_of)

    def best_rows(self) -> dict[str, set[int]]:
        """Column key → indices of the rows that reach the column's best finite value (ties all count)."""
        out: dict[str, set[int]] = {}
        for c in self.columns:
            if c.better not in ("max", "min"):
                continue
            vals = [(as_float(self.rows[i].get(c.key)), i) for i in self.best_of
                    if c.only_if is None or c.only_if(self.rows[i])]
            vals = [(v, i) for v, i in vals if math.isfinite(v)]
            if vals:
                top = (max if c.better == "max" else min)(v for v, _ in vals)
                out[c.key] = {i for v, i in vals if v == top}
        return out

    def best(self) -> dict[str, int]:
        """Column key → index of the first row with the best finite value (columns with a direction)."""
        return {k: min(v) for k, v in self.best_rows().items()}

    def markdown(self, mark_best: bool = True) -> str:
        """A GitHub markdown table; the best value of each column in bold."""
        best = self.best_rows() if mark_best else {}
        lines = ["| " + " | ".join(c.header for c in self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        for i, r in enumerate(self.rows):
            cells = []
            for c in self.columns:
                t = c.text(r)
                cells.append(f"**{t}**" if i in best.get(c.key, ()) and t != MISSING else t)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def terminal(self) -> str:
        """Aligned plain text (numbers right-aligned, text left-aligned)."""
        cells = [[c.header for c in self.columns]] + [[c.text(r) for c in self.columns] for r in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(self.columns))]
        out = []
        for row in cells:
            parts = [(v.ljust(w) if c.kind == "str" else v.rjust(w))
                     for v, w, c in zip(row, widths, self.columns, strict=True)]
            out.append("  ".join(parts).rstrip())
        return "\n".join(out)

    def csv(self) -> str:
        """CSV of the raw values (full precision; empty for None), header = the column keys."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([c.key for c in self.columns])
        for r in self.rows:
            w.writerow(["" if r.get(c.key) is None else r.get(c.key) for c in self.columns])
        return buf.getvalue()

    def html(self, mark_best: bool = True, css_class: str = "table") -> str:
        """An HTML ``<table>``; the best value of each column in a ``<strong class="best">``."""
        best = self.best_rows() if mark_best else {}
        head = "".join(f"<th>{c.html if c.html is not None else escape(c.header)}</th>" for c in self.columns)
        body = []
        for i, r in enumerate(self.rows):
            tds = []
            for c in self.columns:
                t = escape(c.text(r))
                if c.kind != "str":
                    t = minus(t)
                if i in best.get(c.key, ()) and t != MISSING:
                    t = f'<strong class="best">{t}</strong>'
                tds.append(f"<td>{t}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        return (f'<table class="{css_class}"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>")
