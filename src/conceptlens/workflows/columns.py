"""The columns of the comparison table: how each metric is shown, its direction, which methods compete for
its best value, and the names methods are shown under (:mod:`conceptlens.workflows.compare` measures them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conceptlens._check import is_finite
from conceptlens.errors import ParameterError
from conceptlens.report.table import Column

__all__ = ["METRIC_COLUMNS", "METRICS", "COLUMNS", "PRINTED", "ALIASES", "faithful", "method_label"]


def faithful(row: Mapping[str, Any]) -> bool:
    """Whether a method's concept model stands for the model: it keeps at least half of the predictions
    (``accuracy``; ``fid_c`` where no image is classified as the target). C-Ins, C-Del and C-μFid judge the
    importance ranking *of the concept model*; a method whose reconstruction changes the logits (e.g. a
    logit off by 125 %) can score a higher C-Ins than the model's own logit, so only faithful methods compete
    for those columns' best value."""
    acc = row.get("accuracy")
    v = acc if is_finite(acc) else row.get("fid_c")
    return is_finite(v) and float(v) >= 0.5


#: Every metric column: how it is shown and its direction (``better``: "max" = larger is better, "min" =
#: smaller is better; ``only_if``: the rows that compete for the best value). The one spec of the HTML
#: summary, the CSV and the terminal table.
METRIC_COLUMNS: tuple[Column, ...] = (
    Column("fid_c", "Fid_c", kind="pct", digits=0, better="max", html="Fid<sub>c</sub>"),
    Column("fid_r", "Fid_r", better="min", html="Fid<sub>r</sub>"),
    Column("accuracy", "accuracy", kind="pct", digits=0, better="max"),
    Column("reconstruction_error", "rec. error", better="min"),
    Column("c_insertion", "C-Ins", better="max", only_if=faithful),
    Column("c_deletion", "C-Del", better="min", only_if=faithful),
    Column("c_mu_fidelity", "C-μFid", better="max", only_if=faithful),
    Column("c_gini", "C-Gini", better="max"),
    Column("sparsity", "sparsity", kind="pct", digits=0, better="min"),
    Column("stability", "stability", better="max"),
    Column("kept_area", "kept area", kind="pct", digits=0, better="min"),
    Column("pixel_deletion", "pixel Del", better="min"),
    Column("pixel_insertion", "pixel Ins", better="max"),
    Column("seconds", "fit (s)", digits=1, better="min"),
)
#: Every metric column's direction, by key.
METRICS: dict[str, str] = {c.key: str(c.better) for c in METRIC_COLUMNS}
#: The CSV's columns (keys), in order.
_CSV_COLUMNS: tuple[Column, ...] = (Column("method", "method", kind="str"),
                                    Column("n_concepts", "k", kind="str"),  # an int, written as is
                                    *METRIC_COLUMNS, Column("error", "error", kind="str"))
COLUMNS: tuple[str, ...] = tuple(c.key for c in _CSV_COLUMNS)
#: The columns the command line prints.
PRINTED: tuple[str, ...] = ("fid_c", "fid_r", "accuracy", "c_insertion", "c_deletion", "c_mu_fidelity",
                            "c_gini", "sparsity", "kept_area", "seconds")
#: Method names that are another name of a registered decomposition (shown in capitals, as their paper
#: names them: "ice" → "ICE").
ALIASES: dict[str, str] = {"ice": "nmf"}


def method_label(method: str) -> str:
    """The name a method is shown under: its declared ``label`` (``decompose.get(m).display_name()``), an
    alias of :data:`ALIASES` in capitals, anything else (``"masks"``) as given."""
    from conceptlens import decompose

    if method in ALIASES:
        return method.upper()
    try:
        return decompose.get(method).display_name()
    except ParameterError:
        return str(method)
