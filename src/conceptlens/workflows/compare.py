"""Every concept method on one class, side by side, measured with the same numbers.

Notation: ``x [N,3,H,W]`` the images, ``A = g(x) [N,h,w,C]`` their activations (computed once and shared
by every method), ``c`` the target class, ``k`` the number of concepts, ``U [N,h,w,k]`` a method's codes,
``Â = decode(U)`` its reconstruction, ``h`` the head.

Each method is fitted as a :class:`~conceptlens.ConceptExplainer` (CRAFT fits its bank on crops of ``x``
itself) and judged by the numbers in :data:`METRICS`, the one place where each metric's direction (is
larger better?) is declared:

* ``fid_c`` (top-1 agreement of ``h(Â)`` with ``h(A)``), ``fid_r`` (relative error of the target logit),
  ``accuracy`` (FACE's: of the images the model classifies as ``c``, the fraction that ``h(Â)`` still
  classifies as ``c``), ``reconstruction_error`` (``‖A − Â‖ / ‖A‖``);
* ``c_insertion``, ``c_deletion``, ``c_mu_fidelity``: CRAFT's holistic metrics of the importance ranking
  (mean over images; see :mod:`conceptlens.metrics.craft`);
* ``c_gini`` (FACE's Gini index of ``|importance|``: higher = fewer concepts carry the decision),
  ``sparsity`` (fraction of non-zero codes), ``stability`` (FACE's matched cosine across 5 refits; only
  with ``stability=True``), ``seconds`` (wall time of the fit);
* for minimal masks (``"masks"``, per-image optimisation, not a concept bank): ``accuracy`` is the fraction
  of images whose masked version keeps the class, plus ``kept_area``, ``pixel_deletion`` and
  ``pixel_insertion``; the concept columns are NaN.

A method that fails gets a row with its error message instead of sinking the comparison.

>>> res = compare(split, x, target=285, methods=("nmf", "craft", "face"))
>>> res.to_csv("compare.csv"); res.best()["fid_c"]          # ('face', 1.0)
"""

from __future__ import annotations

import csv
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from conceptlens._check import fmt_pct, is_finite
from conceptlens._io import atomic_write
from conceptlens._threads import one_thread_each
from conceptlens.decompose.base import get
from conceptlens.errors import ParameterError
from conceptlens.explainer import ConceptExplainer, layer_activations, resolve_target
from conceptlens.io.sources import as_source
from conceptlens.report.base import Section
from conceptlens.report.table import Column, Table
from conceptlens.split.model_split import ModelSplit
from conceptlens.workflows._compare_rows import (
    empty_row,
    error_text,
    mask_row,
    metrics_of,
    outcome,
    stability_of,
)
from conceptlens.workflows.columns import (
    _CSV_COLUMNS,
    ALIASES,
    COLUMNS,
    METRIC_COLUMNS,
    METRICS,
    PRINTED,
    faithful,
    method_label,
)

__all__ = ["compare", "CompareResult", "METRIC_COLUMNS", "METRICS", "COLUMNS", "PRINTED", "ALIASES",
           "markdown_table", "check_methods", "method_label", "reading", "summary_section",
           "side_by_side_section", "print_table", "write_report", "faithful"]

_NAN = float("nan")



@dataclass
class CompareResult:
    """The comparison table and the fitted explainers.

    Attributes
    ----------
    rows : list[dict]
        One dict per method with every key of :data:`COLUMNS` (``method``, ``n_concepts``, the metrics as
        floats, NaN where not measured, and ``error``: ``""`` or the failure's message).
    explainers : dict[str, ConceptExplainer]
        The fitted explainer of every concept method that succeeded, by method name.
    target : int
        The explained class (-1 when read back from a CSV).
    masks : Any
        The :class:`~conceptlens.attribution.masks.MaskExplanation` when ``"masks"`` was compared, else None.
    mask_indices : list[int]
        The indices in ``x`` of the images the masks explain (``masks.masks[j]`` is image
        ``mask_indices[j]``).
    side_by_side : list[str]
        The methods fitted side by side in one-thread workers (their ``seconds`` overlap in time).
    side_by_side_s : float
        The wall time of that side-by-side block.
    """

    rows: list[dict[str, Any]]
    explainers: dict[str, ConceptExplainer] = field(default_factory=dict)
    target: int = -1
    masks: Any = None
    mask_indices: list[int] = field(default_factory=list)
    side_by_side: list[str] = field(default_factory=list)
    side_by_side_s: float = 0.0

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the table to ``path`` atomically (one row per method, columns :data:`COLUMNS`; floats
        exact)."""
        # repr keeps every bit of a float, so the file reads back to the same numbers
        exact = [{**r, **{m: float(r[m]) for m in METRICS}} for r in self.rows]
        return atomic_write(path, Table(_CSV_COLUMNS, exact).csv())

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> CompareResult:
        """Read a table written by :meth:`to_csv` (without the explainers)."""
        p = Path(path)
        if not p.is_file():
            raise ParameterError(f"no comparison table at {str(p)!r}")
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ParameterError(f"{str(p)!r} is not a comparison table: it lacks the columns {missing}")
            rows = []
            for r in reader:
                row: dict[str, Any] = {"method": r["method"], "n_concepts": int(r["n_concepts"])}
                row.update({m: float(r[m]) if r[m] != "" else _NAN for m in METRICS})
                row["error"] = r["error"]
                rows.append(row)
        return cls(rows=rows)

    def best(self) -> dict[str, tuple[str, float]]:
        """The best value of every metric column: ``{column: (method, value)}``.

        Directions come from :data:`METRIC_COLUMNS`; rows with an error, NaN values and rows a column's
        ``only_if`` rejects (C-Ins / C-Del / C-μFid: methods that are not :func:`faithful`) are ignored; on
        a tie the first method wins; columns without any candidate are left out.
        """
        ok = [i for i, r in enumerate(self.rows) if not r.get("error")]
        best = Table(METRIC_COLUMNS, self.rows, best_of=ok).best()
        return {k: (self.rows[i]["method"], float(self.rows[i][k])) for k, i in best.items()}

    def best_method(self) -> str | None:
        """The method that is best in most quality columns (wall time excluded); ties go to the first.

        Only methods with a fitted explainer count (they have a report); None when none succeeded.
        """
        wins = {m: 0 for m in self.explainers}
        for col, (m, _) in self.best().items():
            if col != "seconds" and m in wins:
                wins[m] += 1
        if not wins:
            return None
        top = max(wins.values())
        return next(m for m in wins if wins[m] == top)

    def __repr__(self) -> str:
        cols = ["method", "fid_c", "fid_r", "accuracy", "c_insertion", "c_deletion", "seconds", "error"]
        lines = [" ".join(f"{c:>12}" for c in cols)]
        for r in self.rows:
            lines.append(" ".join(f"{r[c]:>12.4g}" if c in METRICS else f"{str(r[c])[:12]:>12}"
                                  for c in cols))
        return "CompareResult(\n" + "\n".join(lines) + "\n)"

    def _repr_html_(self) -> str:
        """The table as a notebook card, best value of each column marked (``report.display``)."""
        from conceptlens.report.display import compare_html
        return compare_html(self.rows, METRIC_COLUMNS, label=method_label, reading=reading(self))


def check_methods(methods: Sequence[str] | str) -> list[str]:
    """Validated, lower-case method names (a sequence or one comma-separated string), as :func:`compare`
    reads them; raises ParameterError for an unknown or repeated one."""
    from conceptlens import decompose

    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    names = [str(m).strip().lower() for m in methods]
    if not names:
        raise ParameterError("methods is empty: name at least one, e.g. methods=('nmf', 'craft', 'face')")
    known = sorted(set(decompose.available()) | set(ALIASES) | {"masks"})
    bad = [m for m in names if m not in known]
    if bad:
        raise ParameterError(f"unknown method(s) {bad}; choose among {', '.join(known)}")
    canon = [ALIASES.get(m, m) for m in names]
    dup = sorted({m for m in canon if canon.count(m) > 1})
    if dup:
        same = ", ".join(f"{a} is {b}" for a, b in ALIASES.items())
        raise ParameterError(f"methods name {dup} twice ({same}): list each method once")
    return names


def compare(
    split: ModelSplit,
    x: torch.Tensor,
    target: int | str | None = None,
    methods: Sequence[str] | str = ("nmf", "pca", "kmeans", "craft", "face"),
    n_concepts: int = 10,
    seed: int = 0,
    *,
    A: torch.Tensor | None = None,
    progress: bool | None = None,
    stability: bool = False,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    mask_images: int | Sequence[int] | None = None,
) -> CompareResult:
    """Fit every method on the same images and measure each with the same numbers.

    Parameters
    ----------
    split
        The model cut at a layer (a :class:`~conceptlens.ModelSplit`).
    x
        ``[N,3,H,W]`` normalised images (of the target class), or a folder, Dataset, DataLoader… (held).
    target
        Class index or name; None = the class the model predicts most often on ``x``.
    methods
        Method names (or one comma-separated string): registered decompositions
        (``conceptlens.decompose.available()``), ``"ice"`` (= NMF, shown as ICE) and ``"masks"`` (minimal
        masks; needs :mod:`conceptlens.attribution.masks.explainer`, slow: an optimisation per image).
    n_concepts
        ``k`` for every concept method.
    seed
        Seed of every method and metric.
    A
        Precomputed ``g(x) [N,h,w,C]`` (else computed once here and shared).
    progress
        Progress bars (None: only on a terminal).
    stability
        Also measure FACE's stability (5 refits per method on folds of the images: about 5× the fit time).
    method_params
        Extra arguments per method, e.g. ``{"craft": {"patch_size": 32}, "masks": {"steps": 20}}``.
    mask_images
        Which images the masks explain (an optimisation per image, so a subset keeps it affordable): a
        count ``m`` (the first ``m`` images the model classifies as the target, topped up with the first
        other images when fewer are), a sequence of indices into ``x``, or None for all of them.

    Returns
    -------
    CompareResult
        ``rows`` in the order of ``methods``; ``explainers`` of the concept methods that succeeded.
    """
    from conceptlens.progress import progress_bar

    if not isinstance(split, ModelSplit):
        raise ParameterError("split must be a ModelSplit (cl.ModelSplit(model, layer)), "
                             f"got {type(split).__name__}")
    names = check_methods(methods)
    params = {str(k).lower(): dict(v) for k, v in (method_params or {}).items()}
    unused = sorted(set(params) - set(names))
    if unused:
        raise ParameterError(f"method_params names {unused}, which are not in methods={names}")
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
        raise ParameterError(f"n_concepts must be a positive integer, got {n_concepts!r}")
    if not isinstance(x, torch.Tensor):  # every metric reads every image: the images are held
        x = as_source(x, split.preset, progress=progress).load_all()
    if A is None:
        A = layer_activations(split, x, progress=progress)
    elif A.shape[0] != x.shape[0]:
        raise ParameterError(f"A holds activations of {A.shape[0]} images but x has {x.shape[0]}; pass g(x)")
    split.set_reference(x)  # a token layer's h then puts back these images' mean class tokens, not noise's
    with torch.no_grad():
        logits = split.h(A)
    if target is None:
        target = int(torch.bincount(logits.argmax(1), minlength=logits.shape[1]).argmax())
    c = resolve_target(target, list(getattr(split.preset, "classes", []) or []), int(logits.shape[1]))

    mask_idx = _mask_indices(mask_images, int(x.shape[0]), logits.argmax(1) == c)
    rows: list[dict[str, Any]] = []
    explainers: dict[str, ConceptExplainer] = {}
    mask_expl = None

    def fit(name: str) -> tuple[ConceptExplainer, float]:
        t0 = time.perf_counter()
        ex = ConceptExplainer(split, method=ALIASES.get(name, name), n_concepts=n_concepts, seed=seed,
                              method_params=params.get(name), progress=progress)
        return ex.fit(x, c, A=A), time.perf_counter() - t0

    # the methods that fit in one thread (fit_threads = 1) fit side by side in one-thread workers first:
    # the same explainers as one after the other, in the time of the longest on two cores
    alone = [n for n in names if n != "masks" and getattr(get(ALIASES.get(n, n)), "fit_threads", None) == 1]
    alone = alone if len(alone) > 1 else []
    t_side = time.perf_counter()
    fitted = dict(zip(alone, one_thread_each([functools.partial(outcome, fit, n) for n in alone]),
                      strict=True))
    t_side = time.perf_counter() - t_side
    pending: list[tuple[dict[str, Any], str, Any]] = []  # (row, method, explainer) awaiting its metrics
    for name in progress_bar(names, "methods", enable=progress):
        row = empty_row(name, n_concepts)
        rows.append(row)
        try:
            if name == "masks":
                vals, mask_expl = mask_row(split, x[mask_idx], c, seed, params.get(name, {}), progress)
                row.update(vals)
                row["n_concepts"] = 0
            else:
                ex, row["seconds"] = outcome(fit, name) if name not in fitted else fitted[name]
                pending.append((row, name, ex))
        except Exception as exc:  # noqa: BLE001 - one failing method must not sink the whole comparison
            row["error"] = error_text(exc)
    # every method's metrics in one thread (encodings, curves and subsets: small ops, see
    # conceptlens._threads), side by side in one-thread workers: the same numbers in about half the time
    got = one_thread_each([functools.partial(outcome, metrics_of(ex, A, c, seed), name)
                           for _, name, ex in pending])
    for (row, name, ex), (vals, _) in zip(pending, got, strict=True):
        try:
            for failed in (ex, vals):
                if isinstance(failed, BaseException):
                    raise failed
            row.update(vals)
            if stability:
                row["stability"] = stability_of(ex, A)
            explainers[name] = ex
        except Exception as exc:  # noqa: BLE001 - reported in the method's row
            row["error"] = error_text(exc)
    return CompareResult(rows=rows, explainers=explainers, target=c, masks=mask_expl,
                         mask_indices=mask_idx if mask_expl is not None else [], side_by_side=alone,
                         side_by_side_s=t_side if alone else 0.0)


def _mask_indices(sel: int | Sequence[int] | None, n: int, is_target: torch.Tensor) -> list[int]:
    """Validated indices into ``x`` of the images to mask (see ``mask_images``); ``is_target [n]`` bool."""
    if sel is None:
        return list(range(n))
    if isinstance(sel, bool):
        raise ParameterError(f"mask_images must be a count or a list of indices, got {sel!r}")
    if isinstance(sel, int):
        if not 1 <= sel <= n:
            raise ParameterError(f"mask_images={sel} must be between 1 and the number of images ({n})")
        # a mask keeps the target class: the images of that class first, in their order
        first = [int(i) for i in torch.nonzero(is_target.cpu()).flatten()]
        rest = [i for i in range(n) if not bool(is_target[i])]
        return (first + rest)[:sel]
    idx = [int(i) for i in sel]
    bad = [i for i in idx if not 0 <= i < n]
    if not idx or bad:
        raise ParameterError(f"mask_images must list indices in [0, {n - 1}], got {list(sel)!r}")
    return idx


# ------------------------------------------------------------------------------------------------ reporting
def reading(result: CompareResult) -> list[str]:
    """A few plain-language sentences read off the table (plain text; escape it for HTML)."""
    ok = [r for r in result.rows if not r["error"]]
    out: list[str] = []
    acc = [r for r in ok if is_finite(r["accuracy"])]
    if acc:
        hi = max(acc, key=lambda r: r["accuracy"])
        lo = min(acc, key=lambda r: r["accuracy"])
        with_k = (f" with {hi['n_concepts']} concepts" if hi["n_concepts"] else " with its masks")
        s = f"{method_label(hi['method'])} keeps {fmt_pct(hi['accuracy'])} of the model's predictions{with_k}"
        if lo is not hi and lo["accuracy"] < hi["accuracy"]:
            s += f"; {method_label(lo['method'])} loses {fmt_pct(1 - lo['accuracy'])}"
        out.append(s + ".")
    fr = [r for r in ok if is_finite(r["fid_r"])]
    if len(fr) > 1:
        hi = min(fr, key=lambda r: r["fid_r"])
        lo = max(fr, key=lambda r: r["fid_r"])
        out.append(f"Through {method_label(hi['method'])}'s concepts the class logit is off by "
                   f"{fmt_pct(hi['fid_r'])}, "
                   f"through {method_label(lo['method'])}'s by {fmt_pct(lo['fid_r'])}.")
    ins = [r for r in ok if is_finite(r["c_insertion"]) and is_finite(r["c_deletion"]) and faithful(r)]
    if len(ins) > 1:
        bi = max(ins, key=lambda r: r["c_insertion"])
        bd = min(ins, key=lambda r: r["c_deletion"])
        same = bi is bd
        out.append(f"The importance ranking is most faithful for {method_label(bi['method'])} "
                   + ("on both C-Insertion and C-Deletion" if same else
                      f"on C-Insertion ({method_label(bd['method'])} on C-Deletion)")
                   + ": adding its top concepts first brings the class score back fastest"
                   + ("" if len(ins) == len(ok) else
                      " (among the methods that keep at least half of the predictions)") + ".")
    g = [r for r in ok if is_finite(r["c_gini"])]
    if len(g) > 1:
        hi = max(g, key=lambda r: r["c_gini"])
        out.append(f"{method_label(hi['method'])} concentrates the decision on the fewest concepts "
                   f"(C-Gini {hi['c_gini']:.2f}).")
    t = [r for r in ok if is_finite(r["seconds"])]
    if len(t) > 1:
        f = min(t, key=lambda r: r["seconds"])
        s_ = max(t, key=lambda r: r["seconds"])
        out.append(f"Fastest fit: {method_label(f['method'])} ({f['seconds']:.1f} s); slowest: "
                   f"{method_label(s_['method'])} ({s_['seconds']:.1f} s).")
    for r in result.rows:
        if r["error"]:
            out.append(f"{method_label(r['method'])} failed: {r['error']}")
    return out


def summary_section(result: CompareResult, links: Mapping[str, str] | None = None) -> Section:
    """The report :class:`~conceptlens.report.Section` with the table (best value per column in bold,
    ``class="best"``, ties all marked) and the plain-language reading; ``links`` maps a method to its
    sub-report's URL (see :func:`conceptlens.report.sections.compare.summary_section`)."""
    from conceptlens.report.sections import compare as compare_sections

    return compare_sections.summary_section(result.rows, METRIC_COLUMNS, reading(result), links,
                                            label=method_label)


def side_by_side_section(
    result: CompareResult,
    x: torch.Tensor,
    indices: Sequence[int] = (0, 1, 2, 3),
    *,
    names: Sequence[str] | None = None,
    A: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> Section:
    """Every method's explanation of a few images side by side (see
    :func:`conceptlens.report.sections.compare.side_by_side_section`; ``indices`` into ``x [N,3,H,W]``)."""
    from conceptlens.report.sections import compare as compare_sections

    return compare_sections.side_by_side_section(result, x, indices, names=names, A=A, threshold=threshold,
                                                 label=method_label)


def markdown_table(result: CompareResult) -> str:
    """The :data:`PRINTED` columns as a markdown table (headers with ↑ / ↓, the best value of each column
    in bold among the rows without an error, methods under their labels): what ``make demo`` writes to
    ``bench/results/demo.md`` and the README shows."""
    cols = sorted((c for c in METRIC_COLUMNS if c.key in PRINTED), key=lambda c: PRINTED.index(c.key))
    arrows = [replace(c, header=f"{c.header} {'↑' if c.better == 'max' else '↓'}") for c in cols]
    rows = [{**r, "label": method_label(str(r["method"]))} for r in result.rows]
    ok = [i for i, r in enumerate(result.rows) if not r.get("error")]
    return Table([Column("label", "method", kind="str"), *arrows], rows, best_of=ok).markdown() + "\n"


def print_table(result: CompareResult, echo: Callable[[str], Any] = print) -> None:
    """Print the :data:`PRINTED` columns of the table, one line per method (4 decimals; ``nan``: not
    measured), then :func:`reading`'s sentences."""
    from conceptlens.report.sections import compare as compare_sections

    cols = [c for c in METRIC_COLUMNS if c.key in PRINTED]
    cols.sort(key=lambda c: PRINTED.index(c.key))
    for line in compare_sections.terminal_table(result.rows, cols).splitlines():
        echo(line)
    for s in reading(result):
        echo(s)


def write_report(
    result: CompareResult,
    x: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    A: torch.Tensor | None = None,
    progress: bool | None = None,
    side_by_side: Sequence[int] = (0, 1, 2, 3),
    extra_sections: Sequence[Any] = (),
) -> Path:
    """Write ``out_dir/compare.csv``, one report per method in ``out_dir/<method>/index.html`` and
    ``out_dir/index.html``: the best method's report with the comparison section added.

    Parameters
    ----------
    result
        The output of :func:`compare`.
    x
        ``[N,3,H,W]`` the images the comparison was run on.
    names
        ``N`` image names for captions.
    A
        ``g(x)`` (skips the forward pass).
    side_by_side
        Indices of the images shown with every method's explanation side by side (empty: none).
    extra_sections
        More :class:`~conceptlens.report.Section` s for the main page (e.g. FACE's λ sweep).

    Returns
    -------
    pathlib.Path
        ``out_dir/index.html``.
    """
    from conceptlens import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.to_csv(out / "compare.csv")
    best = result.best_method()
    if best is None:
        errors = "; ".join(f"{r['method']}: {r['error']}" for r in result.rows)
        raise ParameterError(f"every method failed, so there is no report to write ({errors})")
    if A is None:
        A = result.explainers[best].activations(x)
    by_method = {r["method"]: r for r in result.rows}
    for m, ex in result.explainers.items():
        row = by_method[m]
        mets = {k: row[k] for k in METRICS if is_finite(row[k])}
        report.write(ex, x, out / m, names=names, A=A, metrics=mets, progress=progress,
                     title=f"{method_label(m)}: {ex.target_name_}")
    links = {m: f"{m}/index.html" for m in result.explainers}
    sections = [side_by_side_section(result, x, side_by_side, names=names, A=A)] if len(side_by_side) else []
    extra = list(extra_sections)
    if result.masks is not None and result.mask_indices:
        extra.insert(0, _masks_section(result, x, names))
    ex = result.explainers[best]
    row = by_method[best]
    return report.write(ex, x, out, names=names, A=A, progress=progress,
                        metrics={k: row[k] for k in METRICS if is_finite(row[k])},
                        title=f"Which explanation to trust: {ex.target_name_} (best: {method_label(best)})",
                        lead_sections=[summary_section(result, links), *sections],
                        extra_sections=extra)


def _masks_section(result: CompareResult, x: torch.Tensor, names: Sequence[str] | None) -> Any:
    """The masks' report section with Grad-CAM at the masks' area measured here (the section runs nothing)."""
    from conceptlens.attribution.baselines import grad_cam
    from conceptlens.report.sections import compare as compare_sections
    from conceptlens.workflows.masks import equal_area_rows

    ex = next(iter(result.explainers.values()), None)
    model = ex.split.model if ex is not None else None
    baselines = comparison = None
    if ex is not None:
        xs = x[list(result.mask_indices)]
        baselines = {"grad_cam": grad_cam(ex.split, xs, result.masks.target)}
        comparison = equal_area_rows(model, xs, result.masks, baselines)
    return compare_sections.masks_section(result, x, names, model=model, baselines=baselines,
                                          comparison=comparison)
