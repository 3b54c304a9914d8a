"""The static HTML report: one ``index.html`` (inline CSS and SVG, no script, no external URL) + img/ PNGs.

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
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlens._check import check_int, fmt_num, fmt_pct, is_finite, minus
from conceptlens._io import atomic_write
from conceptlens.errors import ImageError, NotFittedError, ParameterError
from conceptlens.progress import progress_bar
from conceptlens.report import figures
from conceptlens.report.base import Section, short, signed
from conceptlens.report.svg import local_svg

__all__ = ["Section", "write", "metric_rows"]

_IMG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.png$")
#: CRAFT's maps section shows the first images (upsampled and implicit maps side by side).
_N_MAPS = 3


# ------------------------------------------------------------------------------------------------ text
def _sum_line(terms: Sequence[float], total: float) -> str:
    """``a + b − c = t`` with three decimals (real minus signs, and never "+ -")."""
    out = minus(f"{terms[0]:.3f}")
    for t in terms[1:]:
        out += f" {'−' if t < 0 else '+'} {abs(t):.3f}"
    return f"{out} = {minus(f'{total:.3f}')}"


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
    model_accuracy = fmt_pct(metrics.get("model_accuracy"))
    known: dict[str, tuple[str, Callable[[float], str], Callable[[float], str]]] = {
        "fid_c": ("top-1 agreement (fid_c)", fmt_pct,
                  lambda v: f"The concepts keep the model's top-1 class on {fmt_pct(v)} of the images "
                            "(higher is better)."),
        "fid_r": ("logit error (fid_r)", lambda v: f"{v:.3f}",
                  lambda v: f"Seen through the concepts, the {t} logit is off by {fmt_pct(v)} of its size, "
                            "summed over the images (0 is perfect)."),
        "accuracy": ("accuracy through the concepts", fmt_pct,
                     lambda v: f"Seen through the concepts, the model predicts {t} on {fmt_pct(v)} of the "
                               "images" + (f" (the model itself: {model_accuracy})."
                                           if is_finite(metrics.get("model_accuracy")) else ".")),
        "model_accuracy": ("model accuracy", fmt_pct,
                           lambda v: f"The model itself predicts {t} on {fmt_pct(v)} of the images."),
        "reconstruction_error": ("reconstruction error", lambda v: f"{v:.3f}",
                                 lambda v: f"The concepts rebuild the layer's activations with {fmt_pct(v)} "
                                           "relative error (‖A − Â‖ / ‖A‖; 0 is perfect)."),
        "sparsity": ("non-zero codes (sparsity)", fmt_pct,
                     lambda v: f"{fmt_pct(v)} of the concept coefficients are non-zero (lower: each region "
                               "is described by fewer concepts)."),
        "n_images": ("images", lambda v: f"{v:.0f}", lambda v: "The number of images these are measured on."),
    }
    rows = []
    for key, value in metrics.items():
        name, fmt, reading = known.get(str(key), (str(key), fmt_num, lambda v: ""))
        if is_finite(value):
            v = float(value)
            rows.append({"key": str(key), "name": name, "value": fmt(v), "reading": reading(v)})
        else:
            rows.append({"key": str(key), "name": name, "value": str(value),
                         "reading": "not available" if str(key) in known else ""})
    return rows


def _slug(text: str, used: set[str]) -> str:
    base = "s-" + (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section")
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


# ------------------------------------------------------------------------------------------------ files
class _Pictures:
    """Pictures ``[H,W,3]`` written as PNGs under ``img/`` by a background thread while the page is built
    (Pillow's encoder releases the GIL, so the encoding runs beside the figures' Python work)."""

    def __init__(self, out_dir: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.out = out_dir
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="png")
        self.pending: list[Any] = []

    def add(self, name: str, pic: Any, alt: str) -> dict[str, Any]:
        """Queue ``pic`` as ``img/name`` and describe it for the template (its size is the picture's)."""
        self.pending.append(self.pool.submit(figures.save_picture, pic, self.out / "img" / name))
        return {"src": f"img/{name}", "width": int(pic.shape[1]), "height": int(pic.shape[0]), "alt": alt}

    def wait(self) -> None:
        """Wait for every file; raise the first error (in the order queued)."""
        self.pool.shutdown(wait=True)
        for f in self.pending:
            f.result()


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
    **stream: Any,
) -> Path:
    """Write the HTML report of a fitted explainer on images ``x`` (a tensor, or any image source, streamed).

    Parameters
    ----------
    ex
        A fitted :class:`~conceptlens.ConceptExplainer`.
    x
        ``[N,3,H,W]`` normalised images: the prototypes are picked among them and the metrics measured on
        them (``ex.split.preset.denormalize`` turns them back into pictures; without a preset each image
        is min-max scaled). Or any source ``ex.fit`` reads (a path, folder, glob, list of paths, Dataset,
        DataLoader, :class:`~conceptlens.io.sources.ImageSource`): read once, batch by batch, keeping only
        each image's row of numbers; the shown images (prototypes, local explanations) are then fetched
        again by position, so memory does not grow with ``N`` beyond ``[N, k]`` numbers.
    out_dir
        Folder to write ``index.html`` and ``img/*.png`` into (created if missing; files of the same names
        are replaced, other files are left alone).
    names
        ``N`` image names for captions (default: the file paths of a source of files, else ``"image 0"``,
        ``"image 1"``, …).
    n_prototypes
        Prototypes per concept: the images with the highest concept score.
    n_local
        Local explanations for the first ``n_local`` images (0 for none).
    metrics
        Numbers for the header table; None computes :func:`conceptlens.metrics.evaluate` on ``x`` (on a
        source, the same numbers batch by batch: :func:`conceptlens.stream.evaluate_source`).
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
        Precomputed activations ``g(x) [N,h,w,C]`` (skips the forward pass; a tensor ``x`` only).
    craft_sections
        Add CRAFT's sections after ``extra_sections``: the concept tree (when ``ex.tree_`` exists) and, for
        a non-negative bank, the upsampled and implicit-differentiation maps side by side for the first
        images. None (default): for explainers fitted on crops (methods with ``fit_on = "crops"``) or
        with a tree.
    edit_sections
        Add the "Concept edits" section after those: for each concept (most important first), the change of
        the target logit on every image when the concept is removed (:meth:`ConceptExplainer.edit`), as a
        chart and a table next to the concept's prototypes. None (default): for methods that declare
        ``"edits"`` in ``report_sections`` (EDDP); True adds it for any method.
    stream
        Options of a streamed source (``batch_size``, ``num_workers``, ``class_folder``,
        ``target_images``), as in :meth:`ConceptExplainer.explain <conceptlens.ConceptExplainer.explain>`;
        any of them streams a tensor too.

    Returns
    -------
    pathlib.Path
        The path of ``out_dir/index.html``.
    """
    from conceptlens.report import source

    sections = [*extra_sections, *lead_sections]
    streamed = bool(stream) or not isinstance(x, torch.Tensor)
    _check_args(ex, None if streamed else x, n_prototypes, n_local, sections)
    if streamed and A is not None:
        raise ParameterError("A= holds the activations of images in one tensor; a source is read batch by "
                             "batch: drop A (or pass the images as a tensor)")
    if edit_sections is None:
        edit_sections = "edits" in getattr(type(ex.decomposition_), "report_sections", ())
    imgs = source.from_source(ex, x, names, metrics, edit_sections, stream) if streamed else \
        source.from_tensor(ex, x, A, names, metrics, edit_sections)
    N = imgs.n
    n_prototypes, n_local = min(n_prototypes, N), min(n_local, N)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _collect(ex, imgs, n_prototypes, n_local, threshold, dim)
    extra_sections = [*extra_sections, *_method_sections(ex, data, imgs, n_local, craft_sections)]
    page: dict[str, Any] = {"concepts": [], "locals": [], "extras": [], "leads": []}
    used = {"overview", "importance", "metrics", "concepts", "local"}
    used |= {f"concept-{j}" for j in range(data.k)} | {f"image-{i}" for i in range(n_local)}
    jobs: list[Callable[[], None]] = [functools.partial(_importance_job, data, out, page)]
    pics = _Pictures(out)
    jobs.extend(functools.partial(_concept_job, data, pics, page, r, j) for r, j in enumerate(data.order))
    jobs.extend(functools.partial(_local_job, data, pics, page, i) for i in range(n_local))
    jobs.extend(_section_job(s, out, page["leads"], used) for s in lead_sections)
    jobs.extend(_section_job(s, out, page["extras"], used) for s in extra_sections)
    try:
        for job in progress_bar(jobs, desc="report", enable=progress):
            job()
    finally:
        pics.pool.shutdown(wait=True)  # no file is left half-written, whatever happened
    pics.wait()
    index = out / "index.html"
    atomic_write(index, _render(ex, data, page, imgs.metrics, title, N, threshold, dim))
    return index


def _check_args(ex: Any, x: torch.Tensor | None, n_prototypes: int, n_local: int,
                sections: Sequence[Section]) -> None:
    """Raise before anything is read or written: unfitted, a bad tensor ``x`` (None: a source), bad counts
    or sections."""
    if getattr(ex, "decomposition_", None) is None:
        raise NotFittedError("report.write needs a fitted explainer: call ex.fit(x, target) first")
    if x is not None and (x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != 3):
        raise ImageError(f"report.write needs images as a tensor [N,3,H,W] with N ≥ 1, got {list(x.shape)}; "
                         "load them with cl.data.load_images(path, preset=model.preset), or pass the "
                         "folder / files / DataLoader itself")
    check_int("n_prototypes", n_prototypes, 1)
    check_int("n_local", n_local, 0)
    for s in sections:
        if not isinstance(s, Section):
            raise ParameterError("extra_sections and lead_sections must hold report.Section objects, got "
                                 f"{type(s).__name__}")
        bad = [n for n in s.images if not _IMG_NAME.match(str(n))]
        if bad:
            raise ParameterError(f"section {s.title!r}: image names must look like 'name.png' "
                                 f"(letters, digits, '_', '.', '-'), got {bad}")


def _method_sections(ex: Any, d: _Data, imgs: Any, n_local: int,
                     craft_sections: bool | None) -> list[Section]:
    """The sections the method's declarations ask for (see ``craft_sections`` and ``edit_sections``)."""
    out: list[Section] = []
    tree = getattr(ex, "tree_", None)
    if craft_sections is None:
        craft_sections = tree is not None or getattr(ex, "crops_", None) is not None
    if craft_sections:
        from conceptlens.report.sections.maps import maps_section
        from conceptlens.report.sections.tree import tree_section

        if tree is not None:
            out.append(tree_section(tree))
        if getattr(ex.decomposition_, "nonnegative", False):
            first = [d.row[i] for i in range(min(_N_MAPS, len(d.names)))]  # among the shown images
            out.append(maps_section(ex, d.x_shown[first], A=d.A_shown[first], names=d.names[:len(first)],
                                    n_images=len(first)))
    if imgs.deltas is not None:
        from conceptlens.report.sections.edits import edit_section

        out.append(edit_section(ex, None, d.names, n_columns=min(n_local, 8), deltas=imgs.deltas))
    return out


@dataclass
class _Data:
    """What the page's jobs read: the explanation of the images as numpy arrays, and the shown pictures.

    ``k`` concepts, ``N`` images, ``p`` shown images (prototypes, local explanations, CRAFT's maps): their
    positions ``shown [p]``; ``row[i]`` is image ``i``'s row in ``pics``, ``maps``, ``predicted``,
    ``x_shown`` and ``A_shown``. Nothing else of the images is kept.
    """

    names: list[str]
    k: int
    scores: torch.Tensor  # [N, k]
    contrib: np.ndarray  # [N, k]
    residual: np.ndarray  # [N]
    logits: np.ndarray  # [N]
    bias: float
    importance: np.ndarray  # [k]
    weights: np.ndarray  # [k]
    imp_method: str
    lo: np.ndarray | None  # [k]
    hi: np.ndarray | None  # [k]
    order: list[int]  # concepts, most important first
    labels: list[str]
    top: np.ndarray  # [n_prototypes, k] image indices
    shown: np.ndarray  # [p] image indices
    row: dict[int, int]
    pics: np.ndarray  # [p, H, W, 3]
    maps: np.ndarray  # [p, k, H, W]
    predicted: torch.Tensor  # [p]
    x_shown: torch.Tensor  # [p, 3, H, W]
    A_shown: torch.Tensor  # [p, h, w, C]
    target: str
    classes: list[str]
    threshold: float
    dim: float
    exact: bool = True  # the head is GAP + linear (see LocalExplanation.exact)

    @property
    def has_ci(self) -> bool:
        return self.lo is not None and self.hi is not None


def _collect(ex: Any, imgs: Any, n_prototypes: int, n_local: int, threshold: float, dim: float) -> _Data:
    """The numbers of the page: one explanation of every image, pictures and maps of the shown ones only."""
    e = imgs.explanation
    k = int(e.scores.shape[1])
    scores = e.scores.detach().cpu()
    importance = ex.importance_.detach().cpu().numpy().astype(np.float64)
    imp = getattr(ex, "importance_result_", None)
    ci_low = getattr(imp, "ci_low", None)
    ci_high = getattr(imp, "ci_high", None)
    has_ci = ci_low is not None and ci_high is not None
    top = torch.topk(scores, n_prototypes, dim=0).indices.numpy()  # [n_prototypes, k]
    shown = np.unique(np.concatenate([top.ravel(), np.arange(max(n_local, min(_N_MAPS, imgs.n)))]))
    xs, As = imgs.fetch(shown)
    with torch.no_grad():
        predicted = ex.split.h(As).argmax(1).cpu()
    maps = ex.explain(xs, A=As).maps.detach().cpu().numpy()  # [p,k,H,W]
    return _Data(
        names=imgs.names, k=k, scores=scores,
        contrib=e.contributions.detach().cpu().numpy(),
        residual=e.residual.detach().cpu().numpy(),
        logits=e.logits.detach().cpu().numpy(),
        bias=float(e.bias),
        exact=bool(e.exact),
        importance=importance,
        weights=ex.weights_.detach().cpu().numpy().astype(np.float64),
        imp_method=getattr(imp, "method", str(ex.importance)),
        lo=ci_low.detach().cpu().numpy() if has_ci else None,
        hi=ci_high.detach().cpu().numpy() if has_ci else None,
        order=[int(j) for j in np.argsort(-importance, kind="stable")],
        labels=[f"concept {j}" for j in range(k)],
        top=top, shown=shown, row={int(i): r for r, i in enumerate(shown)},
        pics=figures.to_pictures(xs, getattr(ex.split, "preset", None)), maps=maps, predicted=predicted,
        x_shown=xs, A_shown=As,
        target=ex.target_name_, classes=ex.classes, threshold=threshold, dim=dim,
    )


def _importance_job(d: _Data, out: Path, page: dict[str, Any]) -> None:
    fig = figures.importance_figure(d.importance, d.labels, ci_low=d.lo, ci_high=d.hi,
                                    xlabel=f"importance ({d.imp_method})")
    page["importance_img"] = _img(out, "importance.png", lambda p: figures.save_png(fig, p),
                                  f"Bar chart of the importance of the {d.k} concepts for {d.target}")


def _concept_job(d: _Data, pics: _Pictures, page: dict[str, Any], rank: int, j: int) -> None:
    names, scores = d.names, d.scores
    idx = d.top[:, j]
    caps = [f"{short(names[i])} · {float(scores[i, j]):.3g}" for i in idx]
    rows = [d.row[int(i)] for i in idx]
    strip = figures.prototype_strip(d.pics[rows], d.maps[rows, j], caps, threshold=d.threshold, dim=d.dim)
    w = float(d.weights[j])
    effect = "adds" if w >= 0 else "takes"
    lo, hi = d.lo, d.hi
    page["concepts"].append({
        "anchor": f"concept-{j}",
        "label": d.labels[j],
        "rank": rank + 1,
        "importance": fmt_num(float(d.importance[j])),
        "ci": (f"{fmt_num(float(lo[j]))} to {fmt_num(float(hi[j]))}"
               if lo is not None and hi is not None else None),
        "weight": signed(w),
        "weight_reading": f"one unit of score {effect} {abs(w):.3g} "
                          f"{'to' if w >= 0 else 'from'} the “{d.target}” logit",
        "mean_score": fmt_num(float(scores[:, j].mean())),
        "img": pics.add(f"concept_{j:03d}.png", strip, f"The {len(idx)} prototypes of {d.labels[j]}: "
                    + ", ".join(names[i] for i in idx)
                    + "; the concept's region is bright, the rest dimmed"),
        "prototypes": [{"name": names[i], "score": fmt_num(float(scores[i, j])), "index": int(i)}
                       for i in idx],
    })


def _local_job(d: _Data, pics: _Pictures, page: dict[str, Any], i: int) -> None:
    contrib, order, labels, name = d.contrib, d.order, d.labels, d.names[i]
    c = contrib[i, order]
    total = float(contrib[i].sum() + d.residual[i] + d.bias)
    logit = float(d.logits[i])
    from markupsafe import Markup

    svg = local_svg(c, [labels[j] for j in order], residual=float(d.residual[i]), bias=d.bias, logit=logit,
                    title=f"{short(name, 40)}: logit of {short(d.target, 30)}",
                    alt=f"Contributions of the concepts to the {d.target} logit on {name}")
    r = d.row[i]
    p = int(d.predicted[r])
    page["locals"].append({
        "anchor": f"image-{i}",
        "name": name,
        "predicted": d.classes[p] if p < len(d.classes) else str(p),
        "thumb": pics.add(f"input_{i:03d}.png", d.pics[r], name),
        "svg": Markup(svg),  # inline: escaped by local_svg, drawn in ~1 ms where a PNG took ~0.2 s
        "equation": _sum_line([float(contrib[i].sum()), float(d.residual[i]), d.bias], total),
        "logit": minus(f"{logit:.3f}"),
        "mismatch": abs(total - logit) > 1e-3 * max(1.0, abs(logit)),
        "exact": d.exact,
        "top": [{"label": labels[j], "value": signed(float(contrib[i, j]))}
                for j in np.argsort(-np.abs(contrib[i]), kind="stable")[:3]],
    })


def _section_job(s: Section, out: Path, into: list[dict[str, Any]], used: set[str]) -> Callable[[], None]:
    """Write a section's images, then add it to ``into`` (its anchor is reserved now, in page order)."""
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


def _render(ex: Any, d: _Data, page: dict[str, Any], metrics: Mapping[str, Any], title: str | None, N: int,
            threshold: float, dim: float) -> str:
    """The page's HTML from the template."""
    from conceptlens._version import __version__

    model_name = str(getattr(ex.split.model, "cl_name", type(ex.split.model).__name__))
    facts = [
        ("model", model_name),
        ("layer", str(ex.split.layer)),
        ("method", str(ex.method)),
        ("concepts (k)", str(d.k)),
        ("target class", f"{d.target} (#{ex.target_})"),
        ("importance", str(d.imp_method)),
        ("images", str(N)),
        ("seed", str(getattr(ex, "seed", ""))),
    ]
    # a long value gets a double-width cell rather than breaking mid-word in a narrow one
    facts3 = [(label, value, len(value) > 14) for label, value in facts]
    return str(_environment().get_template("index.html").render(
        title=title if title is not None else f"Concepts of “{d.target}” in {model_name}",
        facts=facts3,
        metrics=metric_rows(metrics, d.target),
        target=d.target,
        importance_img=page["importance_img"],
        has_ci=d.has_ci,
        imp_method=d.imp_method,
        concepts=page["concepts"],
        locals=page["locals"],
        extras=page["extras"],
        leads=page["leads"],
        threshold=threshold,
        dim=dim,
        version=__version__,
    ))
