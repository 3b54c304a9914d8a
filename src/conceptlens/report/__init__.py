"""The static HTML report of a fitted explainer (``cl.report.write``) and its figures.

>>> import conceptlens as cl
>>> cl.report.write(ex, x, "report/")          # report/index.html + report/img/*.png
>>> cl.report.write(ex, "photos/", "report/")   # any source (folder, glob, DataLoader): read in batches,
...                                             # only the shown images kept (conceptlens.report.source)

``write`` lays out the header and metrics, the importance chart, one section per concept with its
prototypes (ICE heatmaps) and the local explanations; later analyses add :class:`Section` s through
``extra_sections`` (:mod:`conceptlens.report.sections` holds one module per such section).
:mod:`conceptlens.report.figures` holds the reusable pieces (``heatmap_overlay``, ``save_png``, the bar
charts), ``conceptlens.report.svg`` the page's inline SVG chart of each local explanation and
:mod:`conceptlens.report.table` the one table renderer.

matplotlib and jinja2 load on first use of ``write`` or ``figures``: importing :class:`Section` or
:mod:`conceptlens.report.table` (as the workflows do) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from conceptlens.report.base import Section

#: Attributes loaded on first use: name → (module, attribute or None for the module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "figures": ("conceptlens.report.figures", None),
    "heatmap_overlay": ("conceptlens.report.figures", "heatmap_overlay"),
    "save_png": ("conceptlens.report.figures", "save_png"),
    "metric_rows": ("conceptlens.report.html", "metric_rows"),
    "write": ("conceptlens.report.html", "write"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'conceptlens.report' has no attribute {name!r}")


__all__ = ["Section", "figures", "heatmap_overlay", "metric_rows", "save_png", "write"]
