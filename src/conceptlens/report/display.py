"""Notebook display: the HTML cards (``_repr_html_``) and the matplotlib figures of the result objects.

One place for every notebook rendering: the explainer's summary card and ``plot_concepts`` figure, a local
explanation's contribution bars and ``plot`` figure, an edit's before/after table and the comparison's
table (best values marked). The explainer-layer classes reach these functions through the
:mod:`conceptlens._display` hook (they may not import the report layer; see
:mod:`conceptlens.summary`); :class:`~conceptlens.workflows.compare.CompareResult` calls
:func:`compare_html` directly.

Notation: ``k`` concepts, ``n`` explained images, ``s`` the side of a thumbnail. Cards are self-contained
HTML fragments (inline CSS, pictures as ``data:image/png;base64`` URIs), every user string escaped, every
number printed with :func:`num` (4 significant digits, a true minus sign) so a test can read it back.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import torch

from conceptlens import _display
from conceptlens._check import MISSING, as_float, fmt_pct, is_finite, minus
from conceptlens.errors import ParameterError
from conceptlens.report import figures
from conceptlens.report.table import Column, Table

__all__ = ["num", "png_uri", "explainer_html", "explanation_html", "edit_html", "compare_html",
           "concepts_figure", "explanation_figure"]

_CARD = ("font-family:system-ui,sans-serif;font-size:13px;line-height:1.35;border:1px solid #d0d7de;"
         "border-radius:6px;padding:10px 12px;max-width:760px")
_TD = "padding:1px 10px 1px 0;text-align:left;vertical-align:top"
_MAX_IMAGES = 8  # local explanations drawn in a card (the rest are counted)


def num(v: Any) -> str:
    """A number as the cards print it: 4 significant digits, true minus sign, ``–`` when not finite."""
    x = as_float(v)
    return minus(f"{x:.4g}") if np.isfinite(x) else MISSING


def png_uri(pic: Any) -> str:
    """A picture ``[H,W,3]`` (float in [0, 1] or uint8) as a ``data:image/png;base64,…`` URI."""
    from PIL import Image

    a = np.asarray(pic)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.nan_to_num(a.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _card(title: str, body: str) -> str:
    return f'<div class="conceptlens-card" style="{_CARD}"><b>{title}</b>{body}</div>'


def _rows(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column key/value table; keys and values are already HTML."""
    trs = "".join(f'<tr><td style="{_TD};color:#57606a">{k}</td><td style="{_TD}">{v}</td></tr>'
                  for k, v in pairs)
    return f'<table style="border-collapse:collapse;margin:6px 0">{trs}</table>'


def _class_name(classes: Sequence[str], c: int) -> str:
    return f"{escape(classes[c])} ({c})" if 0 <= c < len(classes) else str(c)


# ------------------------------------------------------------------------------------------------ explainer
def explainer_html(ex: Any) -> str:
    """The explainer's summary card: model, layer, method, ``k``, importance, target, fit fidelity, then the
    concepts by importance, each with its top prototype from the fit (a small inline PNG, the concept's
    region bright)."""
    from conceptlens.decompose import get

    model = getattr(ex.split.model, "cl_name", type(ex.split.model).__name__)
    label = get(ex.method).display_name()
    title = f"ConceptExplainer · {escape(label)} · k = {ex.n_concepts}"
    pairs = [("model", escape(str(model))), ("layer", f"<code>{escape(ex.split.layer)}</code> "
                                                       f"{list(ex.split.activation_shape)}"),
             ("method", f"{escape(label)} (<code>{escape(ex.method)}</code>)"), ("k", str(ex.n_concepts))]
    if getattr(ex, "decomposition_", None) is None:
        pairs.append(("state", "not fitted: call <code>.fit(x, target)</code>"))
        return _card(title, _rows(pairs))
    imp = getattr(ex, "importance_result_", None)
    fid = getattr(ex, "fit_fidelity_", None)
    fid_text = (f"Fid<sub>c</sub> = {num(fid['fid_c'])}, Fid<sub>r</sub> = {num(fid['fid_r'])} "
                f"on the {int(ex.fit_scores_.shape[0])} fit images" if fid else
                "– (loaded from a file: <code>cl.metrics.fidelity(ex, x)</code> measures it)")
    pairs += [("importance", escape(str(getattr(imp, "method", ex.importance)))),
              ("target", _class_name(ex.classes, int(ex.target_))), ("fidelity", fid_text)]
    values = ex.importance_.detach().cpu().double()
    weights = ex.weights_.detach().cpu().double()
    order = [int(j) for j in np.argsort(-values.numpy(), kind="stable")]
    imgs = getattr(ex, "display_images_", None)
    pics = None
    if imgs is not None:
        pics = figures.to_pictures(imgs, getattr(ex.split, "preset", None))
        maps = ex.display_maps_.numpy()
    cells = []
    for j in order:
        pic = ""
        if pics is not None:
            ov = figures.heatmap_overlay(pics[j].transpose(2, 0, 1), maps[j])
            pic = (f'<img src="{png_uri(ov)}" alt="concept {j} prototype" '
                   f'style="display:block;width:{ov.shape[1]}px;margin-bottom:2px">')
        cells.append(f'<div class="concept" style="display:inline-block;margin:4px 8px 4px 0;'
                     f'vertical-align:top">{pic}concept {j}<br>importance {num(values[j])}<br>'
                     f'weight {num(weights[j])}</div>')
    note = "" if pics is not None else (
        "<div>no prototypes kept (a loaded explainer): <code>ex.plot_concepts(x)</code> draws them</div>")
    return _card(title, _rows(pairs) + "<div>concepts, most important first:</div>" + note + "".join(cells))


# ---------------------------------------------------------------------------------------------- explanations
def _bar(value: float, scale: float, neutral: bool = False, width: int = 180) -> str:
    """A horizontal bar of ``|value| / scale`` of ``width`` (cut at ``width`` and ended by "»" beyond)."""
    w = 0 if scale <= 0 else round(width * min(1.0, abs(value) / scale))
    color = figures.NEUTRAL if neutral else figures.POSITIVE if value >= 0 else figures.NEGATIVE
    cut = "»" if scale > 0 and abs(value) > scale else ""
    return (f'<span style="display:inline-block;width:{width + 12}px"><span style="display:inline-block;'
            f'height:10px;width:{w}px;background:{color}"></span>{cut}</span>')


def explanation_html(e: Any, *, max_images: int = _MAX_IMAGES) -> str:
    """One card: for each image (at most ``max_images``) its target logit and one bar per concept (sorted
    by ``|contribution|``), then the residual and the bias; the bars of a card share one scale."""
    contrib = e.contributions.detach().cpu().double()
    n, k = contrib.shape
    kind = "exact (GAP + linear head)" if e.exact else "gradient weights (non-linear head)"
    title = f"LocalExplanation · target class {int(e.target)} · {n} image{'s' * (n != 1)} · k = {k}"
    shown = min(n, max_images)
    scale = float(contrib[:shown].abs().max()) if shown else 0.0
    blocks = []
    for i in range(shown):
        order = [int(j) for j in np.argsort(-contrib[i].abs().numpy(), kind="stable")]
        lines = [(f"concept {j}", contrib[i, j]) for j in order]
        lines += [("residual", float(e.residual[i])), ("bias", float(e.bias))]
        trs = "".join(f'<tr><td style="{_TD}">{name}</td><td style="{_TD}">'
                      f'{_bar(float(v), scale, not name.startswith("concept"))}</td>'
                      f'<td style="{_TD};text-align:right">{num(v)}</td></tr>' for name, v in lines)
        blocks.append(f'<div class="image" style="display:inline-block;margin:6px 16px 6px 0;'
                      f'vertical-align:top"><div>image {i}: logit {num(e.logits[i])} = Σ contributions '
                      f'{num(contrib[i].sum())} + residual {num(e.residual[i])} + bias {num(e.bias)}</div>'
                      f'<table style="border-collapse:collapse">{trs}</table></div>')
    more = f"<div>… and {n - shown} more images (e.plot(i) draws any)</div>" if n > shown else ""
    note = "; bars on the concepts' scale (» : longer, cut)"
    return _card(title, f"<div>{kind}{note}</div>" + "".join(blocks) + more)


def explanation_figure(e: Any, *, i: int = 0, n_concepts: int | None = None) -> Any:
    """Image ``i``'s contributions as :func:`conceptlens.report.figures.local_figure` (concepts by
    ``|contribution|``, at most ``n_concepts``)."""
    n, k = e.contributions.shape
    if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
        raise ParameterError(f"i must be an image index in 0 … {n - 1}, got {i!r}")
    c = e.contributions[i].detach().cpu().double().numpy()
    order = [int(j) for j in np.argsort(-np.abs(c), kind="stable")][: n_concepts or k]
    return figures.local_figure(c[order], [f"concept {j}" for j in order], residual=float(e.residual[i]),
                                bias=float(e.bias), logit=float(e.logits[i]),
                                title=f"image {i % n}, class {int(e.target)}")


# ------------------------------------------------------------------------------------------------ concepts
def concepts_figure(ex: Any, *, x: torch.Tensor | None = None, n_prototypes: int = 4,
                    n_concepts: int | None = None) -> Any:
    """One row per concept (most important first): its prototypes as ICE heatmaps, from ``x [N,3,H,W]``
    (the top-scoring images) or, without ``x``, the one prototype kept from the fit."""
    from matplotlib.figure import Figure

    ex._fitted("plot_concepts")
    values = ex.importance_.detach().cpu().double().numpy()
    order = [int(j) for j in np.argsort(-values, kind="stable")][: n_concepts or len(values)]
    preset = getattr(ex.split, "preset", None)
    if x is None:
        if getattr(ex, "display_images_", None) is None:
            raise ParameterError("this explainer kept no prototypes (it was loaded from a file): pass "
                                 "images, ex.plot_concepts(x)")
        pics = figures.to_pictures(ex.display_images_, preset)
        rows = [[(pics[j], ex.display_maps_[j].numpy())] for j in order]
    else:
        if isinstance(n_prototypes, bool) or not isinstance(n_prototypes, int) or n_prototypes < 1:
            raise ParameterError(f"n_prototypes must be an integer ≥ 1, got {n_prototypes!r}")
        A = ex.activations(x)
        scores = ex.explain(x, A=A, maps="none").scores.detach().cpu()
        top = torch.topk(scores, min(n_prototypes, scores.shape[0]), dim=0).indices  # [m, k]
        protos = torch.unique(top)
        pos = {int(p): r for r, p in enumerate(protos)}
        pt = protos.to(x.device)
        maps = ex.explain(x[pt], A=A[pt.to(A.device)]).maps.detach().cpu().numpy()
        pics = figures.to_pictures(x[pt], preset)
        rows = [[(pics[pos[int(i)]], maps[pos[int(i)], j]) for i in top[:, j]] for j in order]
    m = max(len(r) for r in rows)
    fig = Figure(figsize=(1.9 * m + 0.4, 1.9 * len(rows) + 0.2), layout="constrained")
    axes = fig.subplots(len(rows), m, squeeze=False)
    for r, (j, row) in enumerate(zip(order, rows, strict=True)):
        for c in range(m):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(row):
                ax.imshow(figures.heatmap_overlay(row[c][0].transpose(2, 0, 1), row[c][1]))
        axes[r][0].set_title(f"concept {j} · importance {values[j]:.3g}".replace("-", "\u2212"), loc="left",
                             fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------ edits
def edit_html(r: Any, *, classes: Sequence[str] | None = None, max_images: int = 20) -> str:
    """An edit's card: what was removed or rescaled, then per image the target logit before and after, its
    change, and the top-1 class before → after (flips marked); class names from ``classes`` (default: the
    result's own ``classes``)."""
    classes = list(getattr(r, "classes", ()) if classes is None else classes)
    what = ", ".join(f"concept {j} removed" if f == 1 else f"concept {j} × {num(1 - f)}"
                     for j, f in sorted(r.removed.items())) or "nothing (no concept removed)"
    n = int(r.logits.shape[0])
    t = int(r.target)
    before, after = r.original.argmax(1).tolist(), r.logits.argmax(1).tolist()
    flipped = r.flipped.tolist()
    head = "".join(f'<th style="{_TD}">{h}</th>' for h in ("image", "logit before", "after", "Δ", "top-1"))
    trs = []
    for i in range(min(n, max_images)):
        top1 = _class_name(classes, before[i])
        if flipped[i]:
            top1 = f'<strong class="flipped">{top1} → {_class_name(classes, after[i])}</strong>'
        cells = (str(i), num(r.original[i, t]), num(r.logits[i, t]), num(r.delta_target[i]), top1)
        trs.append("<tr>" + "".join(f'<td style="{_TD}">{c}</td>' for c in cells) + "</tr>")
    more = f"<div>… and {n - max_images} more images</div>" if n > max_images else ""
    body = (_rows([("edit", what), ("target", _class_name(classes, t)),
                   ("mean Δ", num(r.delta_target.double().mean())),
                   ("flipped", f"{sum(flipped)} of {n} ({fmt_pct(sum(flipped) / max(n, 1))})")])
            + f'<table style="border-collapse:collapse"><tr>{head}</tr>{"".join(trs)}</table>' + more)
    return _card(f"EditResult · {n} image{'s' * (n != 1)}", body)


# ------------------------------------------------------------------------------------------------ comparison
def compare_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *,
                 label: Callable[[str], str] = str, reading: Sequence[str] = ()) -> str:
    """The comparison's card: one row per method, the metric columns that hold a value, the best value of
    each column marked (``<strong class="best">``, among the methods without an error), then the errors
    and the plain-language reading."""
    cols = [c for c in columns if any(is_finite(r.get(c.key)) for r in rows)]
    shown = [{**r, "label": label(str(r["method"]))} for r in rows]
    ok = [i for i, r in enumerate(rows) if not r.get("error")]
    table = Table([Column("label", "method", kind="str"), *cols], shown, best_of=ok).html(css_class="compare")
    errors = "".join(f"<li>{escape(label(str(r['method'])))}: {escape(str(r['error']))}</li>"
                     for r in rows if r.get("error"))
    body = table + (f"<div>failed:</div><ul>{errors}</ul>" if errors else "")
    body += "".join(f"<p>{escape(s)}</p>" for s in reading)
    return _card(f"Comparison · {len(rows)} methods (best value of each column in bold)", body)


for _name, _fn in (("explainer_html", explainer_html), ("explanation_html", explanation_html),
                   ("explanation_figure", explanation_figure), ("concepts_figure", concepts_figure),
                   ("edit_html", edit_html)):
    _display.register(_name, _fn)
