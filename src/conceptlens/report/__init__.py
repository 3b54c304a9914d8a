"""The static HTML report of a fitted explainer (``cl.report.write``) and its figures.

>>> import conceptlens as cl
>>> cl.report.write(ex, x, "report/")          # report/index.html + report/img/*.png

``write`` lays out the header and metrics, the importance chart, one section per concept with its
prototypes (ICE heatmaps) and the local explanations; later analyses add :class:`Section` s through
``extra_sections``. :mod:`conceptlens.report.figures` holds the reusable pieces (``heatmap_overlay``,
``save_png``, the bar charts).
"""

from __future__ import annotations

from conceptlens.report import figures
from conceptlens.report.figures import heatmap_overlay, save_png
from conceptlens.report.html import Section, metric_rows, write

__all__ = ["Section", "figures", "heatmap_overlay", "metric_rows", "save_png", "write"]
