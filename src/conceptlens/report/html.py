"""The static HTML report: one ``index.html`` (inline CSS, no script, no external URL) + PNGs in ``img/``.

Notation: ``x [N,3,H,W]`` the normalised images, ``k`` concepts, ``j`` a concept's index in the bank
(``ex.concepts_[j]``; "concept j" everywhere in the report), ``i`` an image's index in ``x``.

Page layout, top to bottom: header (model, layer, method, k, target, importance method) with the metrics
table and a plain-language reading of each number; the importance bar chart; one section per concept,
most important first, with its prototypes drawn as ICE heatmaps; the local explanations of the first
``n_local`` images; then any ``extra_sections``.

Extending the report
--------------------
A later analysis (CRAFT's concept tree, FACE's λ curve, mask overlays, a comparison table, …) adds a
section without touching this module: build a :class:`Section` and pass it in ``extra_sections``::

    fig = figures.importance_figure(values, labels)          # or any matplotlib Figure
    s = Section("Concept tree", '<p>…</p><img src="img/tree.png" alt="concept tree">',
                images={"tree.png": fig})
    cl.report.write(ex, x, "report/", extra_sections=[s])

``Section.html`` is inserted as it is (it is trusted markup: escape user text in it yourself, e.g. with
``markupsafe.escape``); ``Section.images`` are written to ``img/`` before the page, so the markup refers
to them as ``img/<name>``. Sections appear in the table of contents in the order given.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlens.errors import ImageError, NotFittedError, ParameterError
from conceptlens.progress import progress_bar
from conceptlens.report import figures

__all__ = ["Section", "write", "metric_rows"]

_IMG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.png$")
_NBSP = "\u00a0"


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


# ------------------------------------------------------------------------------------------------ text
def _pct(v: float) -> str:
    return f"{100 * v:.0f}{_NBSP}%"


def _num(v: float) -> str:
    return _minus(f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}")


def _signed(v: float) -> str:
    return _minus(f"{v:+.3g}")


def _minus(s: str) -> str:
    return s.replace("-", "−")


def _sum_line(terms: Sequence[float], total: float) -> str:
    """``a + b − c = t`` with three decimals (real minus signs, and never "+ -")."""
    out = _minus(f"{terms[0]:.3f}")
    for t in terms[1:]:
        out += f" {'−' if t < 0 else '+'} {abs(t):.3f}"
    return f"{out} = {_minus(f'{total:.3f}')}"


def _short(s: str, n: int = 22) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def metric_rows(metrics: Mapping[str, Any], target_name: str) -> list[dict[str, str]]:
    """The metrics table: one row per entry, with a plain-language reading of the known ones.

    Parameters
    ----------
    metrics
        Name → value, e.g. the output of :func:`conceptlens.metrics.evaluate` (``fid_c``, ``fid_r``,
        ``accuracy``, ``model_accuracy``, ``reconstruction_error``, ``sparsity``, ``n_images``); other
        names are shown with their value and no reading.
    target_name
        The explained class, used in the readings.

    Returns
    -------
    list[dict]
        Rows with keys ``key``, ``name``, ``value`` and ``reading`` (plain strings; the template escapes).
    """
    t = f"“{target_name}”"
    known: dict[str, tuple[str, Callable[[float], str], Callable[[float], str]]] = {
        "fid_c": ("top-1 agreement (fid_c)", _pct,
                  lambda v: f"The concepts keep the model's top-1 class on {_pct(v)} of the images "
                            "(higher is better)."),
        "fid_r": ("logit error (fid_r)", lambda v: f"{v:.3f}",
                  lambda v: f"Seen through the concepts, the {t} logit is off by {_pct(v)} of its size, "
                            "summed over the images (0 is perfect)."),
        "accuracy": ("accuracy through the concepts", _pct,
                     lambda v: f"Seen through the concepts, the model predicts {t} on {_pct(v)} of the "
                               "images" + (f" (the model itself: {_pct(float(metrics['model_accuracy']))})."
                                           if _finite(metrics.get("model_accuracy")) else ".")),
        "model_accuracy": ("model accuracy", _pct,
                           lambda v: f"The model itself predicts {t} on {_pct(v)} of the images."),
        "reconstruction_error": ("reconstruction error", lambda v: f"{v:.3f}",
                                 lambda v: f"The concepts rebuild the layer's activations with {_pct(v)} "
                                           "relative error (‖A − Â‖ / ‖A‖; 0 is perfect)."),
        "sparsity": ("non-zero codes (sparsity)", _pct,
                     lambda v: f"{_pct(v)} of the concept coefficients are non-zero (lower: each region "
                               "is described by fewer concepts)."),
        "n_images": ("images", lambda v: f"{v:.0f}", lambda v: "The number of images these are measured on."),
    }
    rows = []
    for key, value in metrics.items():
        name, fmt, reading = known.get(str(key), (str(key), _num, lambda v: ""))
        if _finite(value):
            v = float(value)
            rows.append({"key": str(key), "name": name, "value": fmt(v), "reading": reading(v)})
        else:
            rows.append({"key": str(key), "name": name, "value": str(value),
                         "reading": "not available" if str(key) in known else ""})
    return rows


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _slug(text: str, used: set[str]) -> str:
    base = "s-" + (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section")
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


# ------------------------------------------------------------------------------------------------ files
def _img(out_dir: Path, name: str, save: Callable[[Path], Any], alt: str) -> dict[str, Any]:
    """Write one PNG under ``img/`` and describe it for the template (relative src, size, alt)."""
    from PIL import Image

    path = out_dir / "img" / name
    save(path)
    with Image.open(path) as im:
        w, h = im.size
    return {"src": f"img/{name}", "width": w, "height": h, "alt": alt}


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("conceptlens.report", "templates"),
        autoescape=True,  # every {{ }} is escaped: class and file names are user data
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _write_text(path: Path, text: str) -> None:
    figures._atomic(path, lambda f: f.write(text.encode("utf-8")))


def _check_int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ParameterError(f"{name} must be an integer ≥ {low}, got {v!r}")
    return int(v)


# ------------------------------------------------------------------------------------------------ write
def write(
    ex: Any,
    x: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    n_prototypes: int = 5,
    n_local: int = 4,
    metrics: Mapping[str, Any] | None = None,
    title: str | None = None,
    progress: bool | None = None,
    extra_sections: Sequence[Section] = (),
    lead_sections: Sequence[Section] = (),
    threshold: float = 0.5,
    dim: float = 0.3,
    A: torch.Tensor | None = None,
    craft_sections: bool | None = None,
    edit_sections: bool | None = None,
) -> Path:
    """Write the HTML report of a fitted explainer on images ``x``.

    Parameters
    ----------
    ex
        A fitted :class:`~conceptlens.ConceptExplainer`.
    x
        ``[N,3,H,W]`` normalised images: the prototypes are picked among them and the metrics measured on
        them (``ex.split.preset.denormalize`` turns them back into pictures; without a preset each image
        is min-max scaled).
    out_dir
        Folder to write ``index.html`` and ``img/*.png`` into (created if missing; files of the same names
        are replaced, other files are left alone).
    names
        ``N`` image names for captions (default ``"image 0"``, ``"image 1"``, …).
    n_prototypes
        Prototypes per concept: the images with the highest concept score.
    n_local
        Local explanations for the first ``n_local`` images (0 for none).
    metrics
        Numbers for the header table; None computes :func:`conceptlens.metrics.evaluate` on ``x``.
    title
        Page title (default: the target class and the model).
    progress
        Progress bar (None: only on a terminal).
    extra_sections
        More :class:`Section` s, appended in order.
    lead_sections
        :class:`Section` s shown first, right after the header (e.g. a comparison of methods).
    threshold, dim
        The heatmap's region threshold and dimming (see :func:`figures.heatmap_overlay`).
    A
        Precomputed activations ``g(x) [N,h,w,C]`` (skips the forward pass).
    craft_sections
        Add CRAFT's sections after ``extra_sections``: the concept tree (when ``ex.tree_`` exists) and the
        upsampled and implicit-differentiation maps side by side for the first images. None (default): for
        explainers fitted on crops (``method="craft"``) or with a tree.
    edit_sections
        Add the "Concept edits" section after those: for each concept (most important first), the change of
        the target logit on every image when the concept is removed (:meth:`ConceptExplainer.edit`), as a
        chart and a table next to the concept's prototypes. None (default): for ``method="eddp"``; True
        adds it for any method.

    Returns
    -------
    pathlib.Path
        The path of ``out_dir/index.html``.
    """
    from conceptlens import metrics as metrics_mod
    from conceptlens._version import __version__

    if getattr(ex, "decomposition_", None) is None:
        raise NotFittedError("report.write needs a fitted explainer: call ex.fit(x, target) first")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ImageError(f"report.write needs images as a tensor [N,3,H,W] with N ≥ 1, got {shape}; "
                         "load them with cl.data.load_images(path, preset=model.preset)")
    N = int(x.shape[0])
    n_prototypes = min(_check_int("n_prototypes", n_prototypes, 1), N)
    n_local = min(_check_int("n_local", n_local, 0), N)
    if names is None:
        names = [f"image {i}" for i in range(N)]
    elif isinstance(names, str) or len(names) != N:
        got = "a string" if isinstance(names, str) else f"{len(names)} names"
        raise ParameterError(f"names must be a list of {N} image names (one per image in x), got {got}")
    names = [str(n) for n in names]
    for s in [*extra_sections, *lead_sections]:
        if not isinstance(s, Section):
            raise ParameterError("extra_sections and lead_sections must hold report.Section objects, got "
                                 f"{type(s).__name__}")
        bad = [n for n in s.images if not _IMG_NAME.match(str(n))]
        if bad:
            raise ParameterError(f"section {s.title!r}: image names must look like 'name.png' "
                                 f"(letters, digits, '_', '.', '-'), got {bad}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if A is None:
        A = ex.activations(x)
    elif A.shape[0] != N:
        raise ParameterError(f"A holds activations of {A.shape[0]} images but x has {N}; "
                             "pass g(x) of the same images")
    tree = getattr(ex, "tree_", None)
    if craft_sections is None:
        craft_sections = tree is not None or getattr(ex, "crops_", None) is not None
    if craft_sections:
        from conceptlens.attribution.implicit import maps_section
        from conceptlens.recursive import tree_section

        extra_sections = list(extra_sections)
        if tree is not None:
            extra_sections.append(tree_section(tree))
        if getattr(ex.decomposition_, "nonnegative", False):
            extra_sections.append(maps_section(ex, x, A=A, names=names, n_images=min(3, N)))
    if edit_sections is None:
        edit_sections = str(getattr(ex, "method", "")) == "eddp"
    if edit_sections:
        extra_sections = [*extra_sections, _edit_section(ex, A, names, n_columns=min(n_local, 8))]
    e = ex.explain(x, A=A, maps="none")  # maps [N,k,H,W] of every image could be GBs: only prototypes
    if metrics is None:
        metrics = metrics_mod.evaluate(ex, x, A=A)
    with torch.no_grad():
        predicted = ex.split.h(A).argmax(1).cpu()
    pics = figures.to_pictures(x, getattr(ex.split, "preset", None))

    k = int(e.scores.shape[1])
    scores = e.scores.detach().cpu()
    contrib = e.contributions.detach().cpu().numpy()
    residual = e.residual.detach().cpu().numpy()
    logits = e.logits.detach().cpu().numpy()
    importance = ex.importance_.detach().cpu().numpy().astype(np.float64)
    weights = ex.weights_.detach().cpu().numpy().astype(np.float64)
    imp = getattr(ex, "importance_result_", None)
    imp_method = getattr(imp, "method", str(ex.importance))
    ci_low = getattr(imp, "ci_low", None)
    ci_high = getattr(imp, "ci_high", None)
    has_ci = ci_low is not None and ci_high is not None
    lo = ci_low.detach().cpu().numpy() if has_ci else None
    hi = ci_high.detach().cpu().numpy() if has_ci else None
    order = [int(j) for j in np.argsort(-importance, kind="stable")]
    labels = [f"concept {j}" for j in range(k)]
    top = torch.topk(scores, n_prototypes, dim=0).indices.numpy()  # [n_prototypes, k]
    protos = np.unique(top)
    row = {int(i): r for r, i in enumerate(protos)}
    pt = torch.as_tensor(protos, device=x.device)
    maps = ex.explain(x[pt], A=A[pt.to(A.device)]).maps.detach().cpu().numpy()  # [len(protos),k,H,W]
    target = ex.target_name_
    classes = ex.classes
    model_name = str(getattr(ex.split.model, "cl_name", type(ex.split.model).__name__))

    jobs: list[Callable[[], None]] = []
    page: dict[str, Any] = {"concepts": [], "locals": []}

    def importance_job() -> None:
        fig = figures.importance_figure(importance, labels, ci_low=lo, ci_high=hi,
                                        xlabel=f"importance ({imp_method})")
        page["importance_img"] = _img(out, "importance.png", lambda p: figures.save_png(fig, p),
                                      f"Bar chart of the importance of the {k} concepts for {target}")

    jobs.append(importance_job)

    def concept_job(rank: int, j: int) -> Callable[[], None]:
        def run() -> None:
            idx = top[:, j]
            caps = [f"{_short(names[i])} · {float(scores[i, j]):.3g}" for i in idx]
            rows = [row[int(i)] for i in idx]
            strip = figures.prototype_strip(pics[idx], maps[rows, j], caps, threshold=threshold, dim=dim)
            w = float(weights[j])
            effect = "adds" if w >= 0 else "takes"
            page["concepts"].append({
                "anchor": f"concept-{j}",
                "label": labels[j],
                "rank": rank + 1,
                "importance": _num(float(importance[j])),
                "ci": (f"{_num(float(lo[j]))} to {_num(float(hi[j]))}" if has_ci else None),
                "weight": _signed(w),
                "weight_reading": f"one unit of score {effect} {abs(w):.3g} "
                                  f"{'to' if w >= 0 else 'from'} the “{target}” logit",
                "mean_score": _num(float(scores[:, j].mean())),
                "img": _img(out, f"concept_{j:03d}.png", lambda p: figures.save_picture(strip, p),
                            f"The {len(idx)} prototypes of {labels[j]}: "
                            + ", ".join(names[i] for i in idx)
                            + "; the concept's region is bright, the rest dimmed"),
                "prototypes": [{"name": names[i], "score": _num(float(scores[i, j])), "index": int(i)}
                               for i in idx],
            })
        return run

    jobs.extend(concept_job(r, j) for r, j in enumerate(order))

    def local_job(i: int) -> Callable[[], None]:
        def run() -> None:
            c = contrib[i, order]
            total = float(contrib[i].sum() + residual[i] + e.bias)
            fig = figures.local_figure(c, [labels[j] for j in order], residual=float(residual[i]),
                                       bias=float(e.bias), logit=float(logits[i]),
                                       title=f"{_short(names[i], 40)}: logit of {_short(target, 30)}")
            p = int(predicted[i])
            page["locals"].append({
                "anchor": f"image-{i}",
                "name": names[i],
                "predicted": classes[p] if p < len(classes) else str(p),
                "thumb": _img(out, f"input_{i:03d}.png", lambda q: figures.save_picture(pics[i], q),
                              names[i]),
                "img": _img(out, f"local_{i:03d}.png", lambda q: figures.save_png(fig, q),
                            f"Contributions of the concepts to the {target} logit on {names[i]}"),
                "equation": _sum_line([float(contrib[i].sum()), float(residual[i]), float(e.bias)], total),
                "logit": _minus(f"{float(logits[i]):.3f}"),
                "mismatch": abs(total - float(logits[i])) > 1e-3 * max(1.0, abs(float(logits[i]))),
                "top": [{"label": labels[j], "value": _signed(float(contrib[i, j]))}
                        for j in np.argsort(-np.abs(contrib[i]), kind="stable")[:3]],
            })
        return run

    jobs.extend(local_job(i) for i in range(n_local))

    used = {"overview", "importance", "metrics", "concepts", "local"} | {f"concept-{j}" for j in range(k)}
    used |= {f"image-{i}" for i in range(n_local)}
    extras: list[dict[str, Any]] = []

    leads: list[dict[str, Any]] = []

    def section_job(s: Section, into: list[dict[str, Any]] = extras) -> Callable[[], None]:
        anchor = s.anchor if s.anchor else _slug(s.title, used)
        used.add(anchor)

        def run() -> None:
            from markupsafe import Markup

            for fname, obj in s.images.items():
                if hasattr(obj, "savefig"):
                    figures.save_png(obj, out / "img" / fname)
                else:
                    figures.save_picture(obj, out / "img" / fname)
            into.append({"title": s.title, "anchor": anchor, "html": Markup(s.html)})
        return run

    jobs.extend(section_job(s, leads) for s in lead_sections)
    jobs.extend(section_job(s) for s in extra_sections)

    for job in progress_bar(jobs, desc="report", enable=progress):
        job()

    facts = [
        ("model", model_name),
        ("layer", str(ex.split.layer)),
        ("method", str(ex.method)),
        ("concepts (k)", str(k)),
        ("target class", f"{target} (#{ex.target_})"),
        ("importance", str(imp_method)),
        ("images", str(N)),
        ("seed", str(getattr(ex, "seed", ""))),
    ]
    # a long value gets a double-width cell rather than breaking mid-word in a narrow one
    facts = [(label, value, len(value) > 14) for label, value in facts]
    html = _environment().get_template("index.html").render(
        title=title if title is not None else f"Concepts of “{target}” in {model_name}",
        facts=facts,
        metrics=metric_rows(metrics, target),
        target=target,
        importance_img=page["importance_img"],
        has_ci=has_ci,
        imp_method=imp_method,
        concepts=page["concepts"],
        locals=page["locals"],
        extras=extras,
        leads=leads,
        threshold=threshold,
        dim=dim,
        version=__version__,
    )
    index = out / "index.html"
    _write_text(index, html)
    return index


# ------------------------------------------------------------------------------------------------ edits
def _edit_section(ex: Any, A: torch.Tensor, names: Sequence[str], *, n_columns: int) -> Section:
    """The "Concept edits" section: the target logit's change on each image when each concept is removed.

    Parameters
    ----------
    ex
        A fitted explainer (any method: :meth:`ConceptExplainer.edit` has a counterpart for each).
    A
        ``[N,h,w,C]`` activations of the report's images.
    names
        ``N`` image names.
    n_columns
        Per-image changes are tabulated for the first ``n_columns`` images (all are in the chart).
    """
    from markupsafe import escape

    k = int(ex.concepts_.shape[0])
    N = int(A.shape[0])
    importance = ex.importance_.detach().cpu().numpy().astype(np.float64)
    order = [int(j) for j in np.argsort(-importance, kind="stable")]
    deltas = np.zeros((N, k))
    flips = np.zeros(k, dtype=np.int64)
    for j in order:  # one batched edit per concept (k is small); each covers every image
        r = ex.edit(A=A, remove=[j])
        deltas[:, j] = r.delta_target.detach().cpu().double().numpy()
        flips[j] = int(r.flipped.sum())
    target = str(ex.target_name_)
    fig = figures.edit_figure(
        deltas[:, order], [f"concept {j}" for j in order],
        xlabel=f"change of the “{_short(target, 30)}” logit\nwhen the concept is removed")
    if str(getattr(ex, "method", "")) == "eddp":
        # the edit clamps at 0 only for layers that were non-negative at fit (see remove_concepts)
        relu = float(getattr(ex.decomposition_, "input_min_", 0.0)) >= 0
        edit = "<i>A</i> − σ(<i>w</i>ᵀ<i>A</i> − <i>b</i>) <i>s</i>"
        how = ("Removing a concept subtracts its <b>encoding direction</b>, the signal vector <i>s</i>, from "
               "the activations at every position, in proportion to its detector's response: <i>A′</i> = "
               f"{f'ReLU({edit})' if relu else edit}. The prototypes of each concept show where its "
               "<b>decoding direction</b>, the detector <i>w</i>, fires.")
    else:
        how = ("Removing a concept subtracts its part of the reconstruction, its code times its direction "
               "(<i>U</i><sub>j</sub> ⊗ <i>W</i><sub>j</sub>), from the activations and keeps the residual.")
    m = min(int(n_columns), N)
    head = "".join(f"<th scope=\"col\">Δ {escape(_short(names[i], 18))}</th>" for i in range(m))
    rows = []
    for rank, j in enumerate(order):
        dj = deltas[:, j]
        cells = "".join(f"<td class=\"num\">{_signed(float(dj[i]))}</td>" for i in range(m))
        neg = " class=\"num neg\"" if dj.mean() < 0 else " class=\"num\""
        rows.append(
            f"<tr><td class=\"num\">{rank + 1}</td><td class=\"name\"><a href=\"#concept-{j}\">concept {j}"
            f"</a></td><td class=\"num\">{_num(float(importance[j]))}</td>"
            f"<td{neg}>{_signed(float(dj.mean()))}</td>"
            f"<td class=\"num\">{_signed(float(dj.min()))} to {_signed(float(dj.max()))}</td>"
            f"<td class=\"num\">{int(flips[j])}/{N}</td>{cells}<td><a href=\"#concept-{j}\"><img "
            f"src=\"img/concept_{j:03d}.png\" alt=\"prototypes of concept {j}\" loading=\"lazy\" "
            "style=\"height:64px;width:auto;max-width:none\"></a></td></tr>"
        )
    html = (
        f"<p>What the model does without each concept. {how} The model is then run on the edited "
        f"activations. A negative change means the concept supports "
        f"“{escape(target)}”; “top-1 changes” counts the images whose predicted class changes. Bars: the "
        f"mean over the {N} images; dots: each image.</p>"
        f"<figure><img src=\"img/edits.png\" alt=\"Change of the {escape(target)} logit on each image when "
        f"each concept is removed\" style=\"max-width:100%;height:auto\"></figure>"
        "<div class=\"table-wrap\"><table class=\"edits\"><thead><tr><th scope=\"col\">#</th>"
        "<th scope=\"col\">concept</th><th scope=\"col\">importance</th><th scope=\"col\">mean Δ logit</th>"
        "<th scope=\"col\">range</th><th scope=\"col\">top-1 changes</th>"
        f"{head}<th scope=\"col\">prototypes</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    return Section(title="Concept edits", html=html, anchor="concept-edits", images={"edits.png": fig})
