"""The result of FACE's λ sweep: its one column spec, the verdict on the seed's claim, its files.

A sweep row is a dict keyed by :data:`SWEEP_COLUMNS` (``method`` is a registered method name or an alias
such as ``"ice"``, every other value a float, NaN where not measured). The headline numbers are measured on
the plain (NNLS, no KL) codes of held-out images; the ``fitted_*`` columns are the labelled extra (the
fit's own codes of the fit images: FACE's are KL-fitted), shown last and never judged by the claim.
:data:`COLUMNS` is the only
description of how those keys are shown: the terminal table, the markdown of ``bench/results/face.md``,
the report section's HTML and the CSV all render it through :class:`conceptlens.report.table.Table`, so a
number reads the same everywhere. Method names are shown as the decompositions declare them
(:meth:`~conceptlens.decompose.base.Decomposition.display_name`); an alias is shown under its own name.

:meth:`SweepResult.claim` checks the seed's claim: the KL term improves faithfulness (accuracy, C-Ins,
C-Del) without hurting much else (MSE, C-Gini, stability, sparsity).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptlens._check import as_float
from conceptlens._io import atomic_write, json_safe, write_json
from conceptlens.report.table import Column, Table
from conceptlens.workflows.compare import method_label

__all__ = ["SweepResult", "COLUMNS", "CODES_NOTE", "SWEEP_COLUMNS", "format_table", "method_label"]

#: How every key of a sweep row is shown (the one column spec of the table, CSV, markdown and HTML).
COLUMNS: tuple[Column, ...] = (
    Column("method", "method", kind="str"),
    Column("kl_weight", "λ", kind="sig"),
    Column("mse", "MSE ↓", kind="sig", better="min"),
    Column("kl", "KL ↓", kind="sig", better="min"),
    Column("total", "objective ↓", kind="sig", better="min"),
    Column("accuracy", "accuracy ↑", better="max"),
    Column("agreement", "top-1 kept (all) ↑", better="max"),
    Column("c_ins", "C-Ins ↑", better="max"),
    Column("c_del", "C-Del ↑", better="max"),
    Column("c_gini", "C-Gini ↑", better="max"),
    Column("sparsity", "sparsity ↓", better="min"),
    Column("stability", "stability ↑", better="max"),
    # The labelled extra, never the headline: the fit's own codes of the fit images (FACE's are fitted
    # with the KL term against the predictions of those very images).
    Column("fitted_accuracy", "KL-fitted: accuracy", better="max"),
    Column("fitted_c_ins", "KL-fitted: C-Ins", better="max"),
    Column("fitted_c_del", "KL-fitted: C-Del", better="max"),
    Column("seconds", "fit s", digits=1),
    Column("n_iter", "iters", digits=0),
    Column("n_images", "images", digits=0),
)
#: The keys of a sweep row, in table order (CSV, JSON).
SWEEP_COLUMNS: tuple[str, ...] = tuple(c.key for c in COLUMNS)
#: Bookkeeping columns that the CSV and JSON keep but the displayed tables leave out (the objective is
#: ``mse + λ·kl``; the number of images is the same on every row and is said in the text).
_HIDDEN = ("total", "n_images")
_SHOWN: tuple[Column, ...] = tuple(c for c in COLUMNS if c.key not in _HIDDEN)
#: Faithfulness numbers the seed claims the KL term improves.
_GAINS = ("accuracy", "c_ins", "c_del")
#: What the headline columns and the ``KL-fitted:`` columns are measured on (said under every table).
CODES_NOTE = (
    "Every column but the last three: each method fitted on the fit images only and scored on the plain "
    "codes (non-negative least squares with the bank frozen, no KL term) of the held-out images. "
    "KL-fitted: the fit's own codes of the fitted images (FACE's are fitted with the KL term against the "
    "predictions of those very images; ICE's are its NMF codes; CRAFT's the plain codes of the fit images), "
    "what earlier versions reported: a labelled extra, not judged by the claim."
)
_SWEPT = "face"


def _display(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "method": method_label(str(r.get("method", _SWEPT)))} for r in rows]


def format_table(rows: Sequence[dict[str, Any]], header: bool = True) -> str:
    """Rows of a sweep as fixed-width text lines (the :data:`COLUMNS` shown), one per row.

    Every cell has the same width whatever the row, so that lines printed one at a time (progress) line
    up under the header. Rows of :func:`~conceptlens.workflows.sweep.sweep` (``time`` instead of
    ``seconds``) are accepted.
    """
    widths = [max(7 if c.kind == "str" else 9, len(c.header)) for c in _SHOWN]
    lines = []
    if header:
        lines.append(" ".join(c.header.ljust(w) if c.kind == "str" else c.header.rjust(w)
                              for c, w in zip(_SHOWN, widths, strict=True)).rstrip())
    for r in _display(rows):
        if "seconds" not in r and "time" in r:
            r["seconds"] = r["time"]
        lines.append(" ".join(c.text(r).ljust(w) if c.kind == "str" else c.text(r).rjust(w)
                              for c, w in zip(_SHOWN, widths, strict=True)).rstrip())
    return "\n".join(lines)


@dataclass
class SweepResult:
    """The rows of a λ sweep and how they were made.

    Attributes
    ----------
    rows : list[dict]
        One dict per (method, ``λ``) with the keys of :data:`SWEEP_COLUMNS`: ``method`` (``"face"``,
        ``"ice"``, ``"craft"``), ``kl_weight`` (0 for the references), the metrics as floats (NaN where not
        measured), ``seconds`` (fit wall time), ``n_iter`` and ``n_images`` (the class's held-out
        images); headline numbers on held-out plain codes, ``fitted_*`` on the fit's own codes (see
        :data:`CODES_NOTE`).
    config : dict
        The data and settings (model, layer, images, targets, ``k``, seed, …).
    """

    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def face_rows(self) -> list[dict[str, Any]]:
        """The swept method's rows sorted by ``λ``."""
        return sorted((r for r in self.rows if r["method"] == _SWEPT), key=lambda r: float(r["kl_weight"]))

    def reference(self, method: str) -> dict[str, Any] | None:
        """The row of a reference method (``"ice"`` or ``"craft"``), or None."""
        return next((r for r in self.rows if r["method"] == method), None)

    def label(self, method: str) -> str:
        """The name ``method`` is shown under (see :func:`method_label`)."""
        return method_label(method)

    # -- the seed's claim ---------------------------------------------------------------------
    def claim(self, tol: float = 0.02, mse_tol: float = 0.10, other_tol: float = 0.05) -> dict[str, Any]:
        """Does the KL term improve faithfulness without hurting much else? Checked at every ``λ > 0``.

        Against FACE at ``λ = 0`` (ICE when the sweep has no ``λ = 0``), a ``λ`` *holds* when accuracy,
        C-Ins and C-Del each move by ``≥ −tol`` and at least one gains ``> tol``, while the MSE rises by at
        most ``mse_tol`` (relative) and C-Gini and stability (when measured) drop, and sparsity (the
        fraction of non-zero codes) rises, by at most ``other_tol``.

        Returns
        -------
        dict
            ``base`` (the row compared against), ``holds_at`` (the ``λ`` where it holds), ``best`` (the
            one with the largest summed gain, or None), ``per_lambda`` (gains, costs, verdict and reason
            per ``λ``) and ``text`` (one sentence).
        """
        face = self.face_rows()
        base = next((r for r in face if float(r["kl_weight"]) == 0.0), None) or self.reference("ice")
        if base is None:
            return {
                "base": None,
                "holds_at": [],
                "best": None,
                "per_lambda": [],
                "text": f"no λ = 0 row ({method_label(_SWEPT)} at λ = 0 or {method_label('ice')}) to "
                        "compare against",
            }
        per = [self._verdict(r, base, tol, mse_tol, other_tol) for r in face if float(r["kl_weight"]) != 0.0]
        holds = [p["kl_weight"] for p in per if p["holds"]]
        best = max((p for p in per if p["holds"]), key=lambda p: sum(p["gains"].values()), default=None)
        name = method_label(base["method"]) + (" at λ = 0" if base["method"] == _SWEPT else "")
        if best is not None:
            g = best["gains"]
            text = (
                f"holds at λ ∈ {{{', '.join(f'{v:g}' for v in holds)}}} (against {name}); best λ = "
                f"{best['kl_weight']:g}: accuracy {g['accuracy']:+.3f}, C-Ins {g['c_ins']:+.3f}, "
                f"C-Del {g['c_del']:+.3f}, MSE {100 * best['mse_rise']:+.1f} %"
            )
        elif per:
            text = f"does not hold at any λ tried (against {name}): " + "; ".join(
                f"λ = {p['kl_weight']:g}: {p['why']}" for p in per
            )
        else:
            text = "no λ > 0 in the sweep"
        return {
            "base": base["method"],
            "holds_at": holds,
            "best": None if best is None else best["kl_weight"],
            "per_lambda": per,
            "text": text,
        }

    @staticmethod
    def _verdict(r: dict[str, Any], base: dict[str, Any], tol: float, mse_tol: float,
                 other_tol: float) -> dict[str, Any]:
        """The claim at one ``λ``: gains, MSE rise, whether it holds and why not."""
        gains = {m: as_float(r[m]) - as_float(base[m]) for m in _GAINS}
        improves = all(g >= -tol for g in gains.values()) and any(g > tol for g in gains.values())
        mse_rise = as_float(r["mse"]) / max(as_float(base["mse"]), 1e-30) - 1.0
        hurt = []
        if mse_rise > mse_tol:
            hurt.append(f"MSE +{100 * mse_rise:.0f} %")
        for m in ("c_gini", "stability"):
            d = as_float(r[m]) - as_float(base[m])
            if math.isfinite(d) and d < -other_tol:
                hurt.append(f"{m.replace('_', '-')} {d:+.3f}")
        ds = as_float(r["sparsity"]) - as_float(base["sparsity"])
        if math.isfinite(ds) and ds > other_tol:
            hurt.append(f"non-zero codes {ds:+.3f}")
        lost = [f"{m} {g:+.3f}" for m, g in gains.items() if g < -tol]
        why = (
            "; ".join(lost + hurt)
            if (lost or hurt)
            else "no faithfulness number gains more than the tolerance"
            if not improves
            else ""
        )
        return {
            "kl_weight": float(r["kl_weight"]),
            "holds": improves and not hurt,
            "gains": gains,
            "mse_rise": mse_rise,
            "why": why,
        }

    # -- tables ----------------------------------------------------------------------------------
    def as_table(self) -> Table:
        """The rows shown through :data:`COLUMNS` (references first, then FACE by ``λ``; labels as shown)."""
        ordered = [r for r in self.rows if r["method"] != _SWEPT] + self.face_rows()
        return Table(_SHOWN, _display(ordered))

    def table(self) -> str:
        """The rows as aligned terminal text (as the CLI prints it)."""
        return self.as_table().terminal()

    def markdown(self, title: str | None = None) -> str:
        """The rows as a markdown table, with the data it was measured on and the verdict on the claim."""
        cfg = self.config
        head = title or f"{method_label(_SWEPT)} λ sweep: {cfg.get('dataset', 'activations')}"
        split = (f"fitted on {cfg['n_fit_images']}, scored on the {cfg['n_held_out_images']} held-out "
                 f"(seeded, {100 * as_float(cfg.get('holdout')):g} % of each predicted class)"
                 if "n_held_out_images" in cfg and as_float(cfg.get("holdout")) > 0
                 else "fitted and scored on the same images")
        desc = (
            f"{head}. {cfg.get('n_images', '?')} images ({split}), layer {cfg.get('layer', '?')}, "
            f"target {cfg.get('target_names', cfg.get('targets', '?'))}, k = {cfg.get('n_concepts', '?')}, "
            f"seed {cfg.get('seed', '?')}; accuracy, C-Ins and C-Del on the "
            f"{int(as_float(self.rows[0]['n_images'])) if self.rows else '?'} correctly classified held-out "
            "images of the class(es); top-1 kept (all): argmax h(UW) = argmax h(A) over every held-out "
            f"image. ↑ higher is better, ↓ lower is better. {CODES_NOTE}"
        )
        claim = (f"Claim (the KL term improves accuracy, C-Ins, C-Del without hurting much else): "
                 f"{self.claim()['text']}.")
        return "\n".join([desc, "", self.as_table().markdown(mark_best=False), "", claim]) + "\n"

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``config``, ``rows`` (NaN → null) and ``claim``."""
        return json_safe(
            {
                "config": self.config,
                "rows": [{c: r.get(c) for c in SWEEP_COLUMNS} for r in self.rows],
                "claim": self.claim(),
            }
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepResult:
        """Inverse of :meth:`to_dict` (null → NaN)."""
        rows = [
            {c: (r.get(c) if c == "method" else as_float(r.get(c))) for c in SWEEP_COLUMNS} for r in d["rows"]
        ]
        return cls(rows=rows, config=dict(d.get("config", {})))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the rows (columns :data:`SWEEP_COLUMNS`, floats exact, NaN as ``nan``) atomically."""
        raw = [{c: (r["method"] if c == "method" else as_float(r.get(c))) for c in SWEEP_COLUMNS}
               for r in self.rows]
        return atomic_write(path, Table(COLUMNS, raw).csv())

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON atomically."""
        return write_json(path, self.to_dict())

    def figure(self, title: str | None = None) -> Any:
        """The λ curves (see :func:`conceptlens.report.sections.sweep.sweep_figure`)."""
        from conceptlens.report.sections.sweep import sweep_figure

        return sweep_figure([self], [title or str(self.config.get("dataset", ""))])

    def save(self, out: str | os.PathLike[str], name: str = "sweep") -> dict[str, Path]:
        """Write ``out/<name>.csv``, ``.json`` and ``.png``; returns their paths by suffix."""
        from conceptlens.report.figures import save_png

        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        return {
            "csv": self.to_csv(d / f"{name}.csv"),
            "json": self.to_json(d / f"{name}.json"),
            "png": save_png(self.figure(), d / f"{name}.png"),
        }
