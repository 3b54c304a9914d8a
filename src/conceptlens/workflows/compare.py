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
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import torch

from conceptlens.errors import ParameterError, TargetError
from conceptlens.explainer import ConceptExplainer, resolve_target
from conceptlens.split.model_split import ModelSplit

__all__ = ["compare", "CompareResult", "METRICS", "COLUMNS", "ALIASES", "LABELS", "reading",
           "summary_section", "side_by_side_section", "write_report"]

#: Every metric column and its direction: "max" = larger is better, "min" = smaller is better.
METRICS: dict[str, str] = {
    "fid_c": "max",
    "fid_r": "min",
    "accuracy": "max",
    "reconstruction_error": "min",
    "c_insertion": "max",
    "c_deletion": "min",
    "c_mu_fidelity": "max",
    "c_gini": "max",
    "sparsity": "min",
    "stability": "max",
    "kept_area": "min",
    "pixel_deletion": "min",
    "pixel_insertion": "max",
    "seconds": "min",
}
#: The CSV's columns, in order.
COLUMNS: tuple[str, ...] = ("method", "n_concepts", *METRICS, "error")
#: Method names that are another name of a registered decomposition.
ALIASES: dict[str, str] = {"ice": "nmf"}
#: Names shown in the report.
LABELS: dict[str, str] = {"ice": "ICE", "nmf": "NMF", "pca": "PCA", "kmeans": "k-means", "craft": "CRAFT",
                          "face": "FACE", "eddp": "EDDP", "masks": "masks"}
_HEADERS: dict[str, str] = {
    "fid_c": "Fid<sub>c</sub>", "fid_r": "Fid<sub>r</sub>", "accuracy": "accuracy",
    "reconstruction_error": "rec. error", "c_insertion": "C-Ins", "c_deletion": "C-Del",
    "c_mu_fidelity": "C-μFid", "c_gini": "C-Gini", "sparsity": "sparsity", "stability": "stability",
    "kept_area": "kept area", "pixel_deletion": "pixel Del", "pixel_insertion": "pixel Ins",
    "seconds": "fit (s)",
}
_NAN = float("nan")


def _label(method: str) -> str:
    return LABELS.get(method, method)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


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
    """

    rows: list[dict[str, Any]]
    explainers: dict[str, ConceptExplainer] = field(default_factory=dict)
    target: int = -1
    masks: Any = None
    mask_indices: list[int] = field(default_factory=list)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the table to ``path`` (one row per method, columns :data:`COLUMNS`; floats exact)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                # repr keeps every bit of a float, so the file reads back to the same numbers
                w.writerow({c: (repr(float(r[c])) if c in METRICS else r.get(c, "")) for c in COLUMNS})
        os.replace(tmp, p)
        return p

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

        Directions come from :data:`METRICS`; rows with an error and NaN values are ignored; on a tie the
        first method wins; columns without any finite value are left out.
        """
        out: dict[str, tuple[str, float]] = {}
        for col, direction in METRICS.items():
            cands = [(r["method"], float(r[col])) for r in self.rows
                     if not r.get("error") and _finite(r.get(col))]
            if not cands:
                continue
            pick = max if direction == "max" else min
            value = pick(v for _, v in cands)
            out[col] = next(c for c in cands if c[1] == value)
        return out

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


# ------------------------------------------------------------------------------------------------ measuring
def _empty_row(method: str, k: int) -> dict[str, Any]:
    return {"method": method, "n_concepts": k, **{m: _NAN for m in METRICS}, "error": ""}


def _concept_metrics(ex: ConceptExplainer, A: torch.Tensor, target: int, seed: int) -> dict[str, float]:
    """Every concept metric of a fitted explainer from one encoding of ``A``."""
    from conceptlens import metrics
    from conceptlens.importance.base import concept_directions
    from conceptlens.metrics.craft import c_deletion_curve, c_insertion_curve, c_mu_fidelity_raw

    d = ex.decomposition_
    h = ex.split.h
    with torch.no_grad():
        U = d.encode(A)
        A_hat = d.decode(U)
        F = h(A)
        Fh = h(A_hat)
    try:
        acc = metrics.reconstruction_accuracy(h, A, A_hat, target)
    except TargetError:  # no image is classified as the target: the number is undefined, not an error
        acc = _NAN
    D, offset = concept_directions(d)
    off = offset if bool(offset.any()) else None
    imp = ex.importance_
    mu = c_mu_fidelity_raw(U, D, h, target, imp, seed=seed, offset=off)
    ok = ~torch.isnan(mu)
    return {
        "fid_c": metrics.fid_c(F, Fh),
        "fid_r": metrics.fid_r(F[:, target], Fh[:, target]),
        "accuracy": acc,
        "reconstruction_error": metrics.reconstruction_error(A, A_hat),
        "c_insertion": float(c_insertion_curve(U, D, h, target, imp, offset=off)[0].mean()),
        "c_deletion": float(c_deletion_curve(U, D, h, target, imp, offset=off)[0].mean()),
        "c_mu_fidelity": float(mu[ok].mean()) if bool(ok.any()) else _NAN,
        "c_gini": metrics.c_gini(imp),
        "sparsity": metrics.sparsity(U),
    }


def _stability(ex: ConceptExplainer, A: torch.Tensor) -> float:
    """FACE's stability of the method: banks refitted on 5 folds of the images (on positions of ``A``)."""
    from conceptlens import decompose
    from conceptlens.metrics.face import stability

    cls = decompose.get(ex.method)
    params = {k: v for k, v in ex.method_params.items() if k not in ("patch_size", "stride")}

    def fit(A_train: torch.Tensor) -> Any:
        d = cls(n_concepts=ex.n_concepts, seed=ex.seed, **params)
        if hasattr(d, "set_head"):
            d.set_head(ex.split.h)
        return d.fit(A_train)

    return stability(fit, A, n_folds=min(5, int(A.shape[0])))


def _mask_row(split: ModelSplit, x: torch.Tensor, target: int, seed: int, params: Mapping[str, Any],
              progress: bool | None) -> tuple[dict[str, float], Any]:
    from conceptlens.attribution.masks.explainer import MaskExplainer, pixel_deletion_auc, pixel_insertion_auc

    t0 = time.perf_counter()
    me = MaskExplainer(split.model, seed=seed, progress=progress, **dict(params))
    e = me.explain(x, target)
    seconds = time.perf_counter() - t0
    return {
        "accuracy": float(e.same_top1.double().mean()),
        "kept_area": float(e.kept_fraction.double().mean()),
        "pixel_deletion": float(pixel_deletion_auc(split.model, x, e.masks, e.target, seed=seed).mean()),
        "pixel_insertion": float(pixel_insertion_auc(split.model, x, e.masks, e.target, seed=seed).mean()),
        "seconds": seconds,
    }, e


def _methods(methods: Sequence[str] | str) -> list[str]:
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
        raise ParameterError(f"methods name {dup} twice (ice is nmf): list each method once")
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
        ``[N,3,H,W]`` normalised images (ideally of the target class).
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
    names = _methods(methods)
    params = {str(k).lower(): dict(v) for k, v in (method_params or {}).items()}
    unused = sorted(set(params) - set(names))
    if unused:
        raise ParameterError(f"method_params names {unused}, which are not in methods={names}")
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
        raise ParameterError(f"n_concepts must be a positive integer, got {n_concepts!r}")
    probe = ConceptExplainer(split, method="pca", n_concepts=1, seed=seed, progress=progress)
    if A is None:
        A = probe.activations(x)
    elif A.shape[0] != x.shape[0]:
        raise ParameterError(f"A holds activations of {A.shape[0]} images but x has {x.shape[0]}; pass g(x)")
    with torch.no_grad():
        logits = split.h(A)
    if target is None:
        target = int(torch.bincount(logits.argmax(1), minlength=logits.shape[1]).argmax())
    c = resolve_target(target, probe.classes, int(logits.shape[1]))

    mask_idx = _mask_indices(mask_images, int(x.shape[0]), logits.argmax(1) == c)
    rows: list[dict[str, Any]] = []
    explainers: dict[str, ConceptExplainer] = {}
    mask_expl = None
    for name in progress_bar(names, "methods", enable=progress):
        row = _empty_row(name, n_concepts)
        try:
            if name == "masks":
                vals, mask_expl = _mask_row(split, x[mask_idx], c, seed, params.get(name, {}), progress)
                row.update(vals)
                row["n_concepts"] = 0
            else:
                t0 = time.perf_counter()
                ex = ConceptExplainer(split, method=ALIASES.get(name, name), n_concepts=n_concepts, seed=seed,
                                      method_params=params.get(name), progress=progress)
                ex.fit(x, c, A=A)
                row["seconds"] = time.perf_counter() - t0
                row.update(_concept_metrics(ex, A, c, seed))
                if stability:
                    row["stability"] = _stability(ex, A)
                explainers[name] = ex
        except Exception as exc:  # noqa: BLE001 - one failing method must not sink the whole comparison
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row["error"] = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        rows.append(row)
    return CompareResult(rows=rows, explainers=explainers, target=c, masks=mask_expl,
                         mask_indices=mask_idx if mask_expl is not None else [])


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
def _pct(v: float) -> str:
    return f"{100 * v:.0f}\u00a0%"


def _fmt(col: str, v: float) -> str:
    if not _finite(v):
        return "–"
    if col in ("fid_c", "accuracy", "sparsity", "kept_area"):
        return _pct(v)
    if col == "seconds":
        return f"{v:.1f}"
    return f"{v:.3f}"


def reading(result: CompareResult) -> list[str]:
    """A few plain-language sentences read off the table (plain text; escape it for HTML)."""
    ok = [r for r in result.rows if not r["error"]]
    out: list[str] = []
    acc = [r for r in ok if _finite(r["accuracy"])]
    if acc:
        hi = max(acc, key=lambda r: r["accuracy"])
        lo = min(acc, key=lambda r: r["accuracy"])
        with_k = (f" with {hi['n_concepts']} concepts" if hi["n_concepts"] else " with its masks")
        s = f"{_label(hi['method'])} keeps {_pct(hi['accuracy'])} of the model's predictions{with_k}"
        if lo is not hi and lo["accuracy"] < hi["accuracy"]:
            s += f"; {_label(lo['method'])} loses {_pct(1 - lo['accuracy'])}"
        out.append(s + ".")
    fr = [r for r in ok if _finite(r["fid_r"])]
    if len(fr) > 1:
        hi = min(fr, key=lambda r: r["fid_r"])
        lo = max(fr, key=lambda r: r["fid_r"])
        out.append(f"Through {_label(hi['method'])}'s concepts the class logit is off by "
                   f"{_pct(hi['fid_r'])}, "
                   f"through {_label(lo['method'])}'s by {_pct(lo['fid_r'])}.")
    ins = [r for r in ok if _finite(r["c_insertion"]) and _finite(r["c_deletion"])]
    if len(ins) > 1:
        bi = max(ins, key=lambda r: r["c_insertion"])
        bd = min(ins, key=lambda r: r["c_deletion"])
        same = bi is bd
        out.append(f"The importance ranking is most faithful for {_label(bi['method'])} "
                   + ("on both C-Insertion and C-Deletion" if same else
                      f"on C-Insertion ({_label(bd['method'])} on C-Deletion)")
                   + ": adding its top concepts first brings the class score back fastest.")
    g = [r for r in ok if _finite(r["c_gini"])]
    if len(g) > 1:
        hi = max(g, key=lambda r: r["c_gini"])
        out.append(f"{_label(hi['method'])} concentrates the decision on the fewest concepts "
                   f"(C-Gini {hi['c_gini']:.2f}).")
    t = [r for r in ok if _finite(r["seconds"])]
    if len(t) > 1:
        f = min(t, key=lambda r: r["seconds"])
        s_ = max(t, key=lambda r: r["seconds"])
        out.append(f"Fastest fit: {_label(f['method'])} ({f['seconds']:.1f} s); slowest: "
                   f"{_label(s_['method'])} ({s_['seconds']:.1f} s).")
    for r in result.rows:
        if r["error"]:
            out.append(f"{_label(r['method'])} failed: {r['error']}")
    return out


def summary_section(result: CompareResult, links: Mapping[str, str] | None = None) -> Any:
    """The report :class:`~conceptlens.report.Section` with the table (best value per column in bold,
    ``class="best"``, ties all marked) and the plain-language reading; ``links`` maps a method to its
    sub-report's URL."""
    from conceptlens.report import Section

    links = dict(links or {})
    best = result.best()
    cols = [c for c in METRICS if any(_finite(r[c]) for r in result.rows)]
    arrows = {"max": "↑", "min": "↓"}
    head = "".join(f'<th scope="col" title="{"higher" if METRICS[c] == "max" else "lower"} is better">'
                   f"{_HEADERS.get(c, escape(c))}&nbsp;{arrows[METRICS[c]]}</th>" for c in cols)
    body = []
    for r in result.rows:
        name = escape(_label(r["method"]))
        cell = f'<a href="{escape(links[r["method"]])}">{name}</a>' if r["method"] in links else name
        tds = [f'<th scope="row">{cell}</th>']
        if r["error"]:
            tds.append(f'<td class="error" colspan="{len(cols)}">failed: {escape(r["error"])}</td>')
        else:
            for c in cols:
                # every method that ties with the best value is marked, not just the first
                is_best = c in best and _finite(r[c]) and float(r[c]) == best[c][1]
                txt = escape(_fmt(c, r[c]))
                tds.append(f'<td class="best"><strong>{txt}</strong></td>' if is_best else f"<td>{txt}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    paras = "".join(f"<li>{escape(s)}</li>" for s in reading(result))
    html = (
        "<p>Every method fitted on the same images and activations, measured with the same numbers; "
        "the best value of each column is in <strong>bold</strong> (↑ higher is better, ↓ lower is better). "
        "Click a method for its own report.</p>"
        f'<div class="table-wrap"><table class="compare"><thead><tr><th scope="col">method</th>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
        f'<ul class="reading">{paras}</ul>'
    )
    return Section("Comparison of methods", html, anchor="compare")


def side_by_side_section(
    result: CompareResult,
    x: torch.Tensor,
    indices: Sequence[int] = (0, 1, 2, 3),
    *,
    names: Sequence[str] | None = None,
    A: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> Any:
    """The report :class:`~conceptlens.report.Section` that shows, for each of a few images, every method's
    explanation side by side.

    One row of panels per image: the picture; for each concept method, the region of the concept that
    contributes most to the target logit on that image (ICE's heatmap: the region bright, the rest dimmed),
    captioned with that concept's share of the logit; for minimal masks, the kept pixels.

    Parameters
    ----------
    result
        The output of :func:`compare`.
    x
        ``[N,3,H,W]`` the images the comparison was run on.
    indices
        Indices into ``x`` of the images to show (out-of-range ones are skipped).
    names
        ``N`` image names for captions.
    A
        ``g(x) [N,h,w,C]`` (skips the forward pass).
    threshold
        The heatmap's region threshold (see :func:`conceptlens.report.figures.heatmap_overlay`).

    Returns
    -------
    conceptlens.report.Section
    """
    from matplotlib.figure import Figure

    from conceptlens.report import Section, figures

    idx = [int(i) for i in indices if 0 <= int(i) < int(x.shape[0])]
    if not idx:
        raise ParameterError(f"indices {list(indices)!r} select no image of the {x.shape[0]} compared")
    if not result.explainers and result.masks is None:
        raise ParameterError("the comparison has no fitted method to show (every method failed)")
    preset = next((getattr(ex.split, "preset", None) for ex in result.explainers.values()), None)
    pics = figures.to_pictures(x[idx], preset)
    where = {int(i): j for j, i in enumerate(result.mask_indices)}
    # one explain() per method on the selected images only; its maps are at the images' resolution
    local = {}
    for m, ex in result.explainers.items():
        local[m] = ex.explain(x[idx], A=None if A is None else A[idx])
    images: dict[str, Any] = {}
    parts = []
    for r, i in enumerate(idx):
        panels: list[tuple[str, Any]] = [("image", pics[r])]
        lines = []
        for m, loc in local.items():
            c = loc.contributions[r]
            j = int(c.argmax())
            logit = float(loc.logits[r])
            panels.append((f"{_label(m)}: concept {j}",
                           figures.heatmap_overlay(pics[r].transpose(2, 0, 1), loc.maps[r, j], threshold)))
            lines.append(f"{_label(m)}: concept {j} adds {float(c[j]):+.2f} to the logit {logit:.2f}")
        if result.masks is not None and i in where:
            e = result.masks
            mk = e.masks[where[i], 0].detach().cpu().numpy().astype("float32")
            pic = pics[r] * (0.3 + 0.7 * mk[:, :, None])
            kept = float(e.kept_fraction[where[i]])
            ok = bool(e.same_top1[where[i]])
            panels.append((f"mask: {100 * kept:.0f} % kept", pic))
            lines.append(f"masks: {100 * kept:.1f} % of the pixels kept; the class "
                         + ("stays top-1" if ok else "is lost"))
        fig = Figure(figsize=(1.9 * len(panels), 2.25), layout="constrained")
        for p, (title, im) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), p + 1)
            ax.imshow(im, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
        fname = f"side_by_side_{r}.png"
        images[fname] = fig
        label = names[i] if names is not None and i < len(names) else f"image {i}"
        items = "".join(f"<li>{escape(t)}</li>" for t in lines)
        parts.append(f'<figure class="side"><img src="img/{fname}" alt="every method on {escape(label)}" '
                     f'style="max-width:100%;height:auto"><figcaption>{escape(label)}<ul>{items}</ul>'
                     "</figcaption></figure>")
    html = ("<p>The same images through every method: for each concept method the region of the concept "
            "that adds most to the class logit on that image, for the masks the pixels kept. Where methods "
            "agree, the explanation is robust; where they differ, trust the one with the better numbers "
            "above.</p>" + "".join(parts))
    return Section("Side by side", html, anchor="side-by-side", images=images)


def _masks_section(result: CompareResult, x: torch.Tensor, names: Sequence[str] | None) -> Any:
    """The masks' section: each masked image with Grad-CAM binarised at the same area (cheap: one backward
    pass; occlusion, ~30× slower, is left to ``conceptlens mask``)."""
    from conceptlens.attribution.baselines import grad_cam
    from conceptlens.report.sections.masks import mask_section

    ex = next(iter(result.explainers.values()), None)
    idx = list(result.mask_indices)
    xs = x[idx]
    sub_names = [names[i] for i in idx] if names is not None else [f"image {i}" for i in idx]
    model = ex.split.model if ex is not None else None
    baselines = None
    if ex is not None:
        split = ex.split
        baselines = {"grad_cam": grad_cam(split, xs, result.masks.target)}
    return mask_section(result.masks, xs, names=sub_names, baselines=baselines, model=model,
                        preset=getattr(model, "preset", None))


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
        mets = {k: row[k] for k in METRICS if _finite(row[k])}
        report.write(ex, x, out / m, names=names, A=A, metrics=mets, progress=progress,
                     title=f"{_label(m)}: {ex.target_name_}")
    links = {m: f"{m}/index.html" for m in result.explainers}
    sections = [side_by_side_section(result, x, side_by_side, names=names, A=A)] if len(side_by_side) else []
    extra = list(extra_sections)
    if result.masks is not None and result.mask_indices:
        extra.insert(0, _masks_section(result, x, names))
    ex = result.explainers[best]
    row = by_method[best]
    return report.write(ex, x, out, names=names, A=A, progress=progress,
                        metrics={k: row[k] for k in METRICS if _finite(row[k])},
                        title=f"Which explanation to trust: {ex.target_name_} (best: {_label(best)})",
                        lead_sections=[summary_section(result, links), *sections],
                        extra_sections=extra)
