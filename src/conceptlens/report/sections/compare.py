"""The comparison's sections and tables: every method side by side, measured with the same numbers.

Notation: ``x [N,3,H,W]`` the compared images; a *row* is one method's dict of numbers (keys: ``method``,
``n_concepts``, one per metric column, ``error``: ``""`` or the failure's message); a *result* is any object
with ``rows``, ``explainers`` (method → fitted explainer), ``masks`` (a mask explanation or None) and
``mask_indices`` (the indices in ``x`` of the masked images), such as
:class:`conceptlens.workflows.compare.CompareResult`. This module takes them as they are (duck-typed): the
report sits below the workflows and never imports them. The columns are
:class:`~conceptlens.report.table.Column` objects, the one spec of the HTML summary, the CSV and the
terminal table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

import torch

from conceptlens._check import as_float, is_finite
from conceptlens.errors import ParameterError
from conceptlens.report import figures
from conceptlens.report.base import Section
from conceptlens.report.table import Column, Table

__all__ = ["best_values", "summary_section", "side_by_side_section", "masks_section", "terminal_table"]

Label = Callable[[str], str]


def _same(method: str) -> str:
    return method


def best_values(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> dict[str, float]:
    """The best finite value of every column with a direction, over the rows without an error (and, for a
    column with ``only_if``, the rows it accepts)."""
    ok = [i for i, r in enumerate(rows) if not r.get("error")]
    best = Table(columns, rows, best_of=ok).best()
    return {k: as_float(rows[i].get(k)) for k, i in best.items()}


def summary_section(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], reading: Sequence[str],
                    links: Mapping[str, str] | None = None, *, label: Label = _same) -> Section:
    """The comparison table and its plain-language reading, as a report :class:`Section`.

    Parameters
    ----------
    rows
        One dict per method (see the module docstring).
    columns
        The metric columns (``better`` gives the arrow and which value is bold); columns without any finite
        value are left out.
    reading
        Plain-text sentences read off the table (escaped here).
    links
        Method → the URL of its own report.
    label
        The name a method is shown under.

    Returns
    -------
    Section
        Anchor ``"compare"``; the best value of each column in ``<td class="best"><strong>`` (every row
        that ties with it is marked).
    """
    links = dict(links or {})
    best = best_values(rows, columns)
    cols = [c for c in columns if any(is_finite(r.get(c.key)) for r in rows)]
    arrows = {"max": "↑", "min": "↓"}
    head = "".join(f'<th scope="col" title="{"higher" if c.better == "max" else "lower"} is better">'
                   f"{c.html if c.html is not None else escape(c.header)}"
                   f"&nbsp;{arrows.get(str(c.better), '')}</th>" for c in cols)
    body = []
    for r in rows:
        m = str(r["method"])
        name = escape(label(m))
        cell = f'<a href="{escape(links[m])}">{name}</a>' if m in links else name
        tds = [f'<th scope="row">{cell}</th>']
        if r.get("error"):
            tds.append(f'<td class="error" colspan="{len(cols)}">failed: {escape(str(r["error"]))}</td>')
        else:
            for c in cols:
                # every method that ties with the best value is marked, not just the first
                is_best = c.key in best and is_finite(r.get(c.key)) and float(r[c.key]) == best[c.key]
                txt = escape(c.text(r))
                tds.append(f'<td class="best"><strong>{txt}</strong></td>' if is_best else f"<td>{txt}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    paras = "".join(f"<li>{escape(s)}</li>" for s in reading)
    html = (
        "<p>Every method fitted on the same images and activations, measured with the same numbers; "
        "the best value of each column is in <strong>bold</strong> (↑ higher is better, ↓ lower is better). "
        "Click a method for its own report.</p>"
        f'<div class="table-wrap"><table class="compare"><thead><tr><th scope="col">method</th>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
        f'<ul class="reading">{paras}</ul>'
    )
    return Section("Comparison of methods", html, anchor="compare")


def terminal_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, name_width: int = 8,
                   width: int = 14) -> str:
    """The table for a terminal: the method, then each column's key and value (4 decimals, ``nan`` when
    not measured) in fixed-width cells; a failed method's line says why."""
    lines = [f"{'method':<{name_width}}" + "".join(f"{c.key:>{width}}" for c in columns)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['method']:<{name_width}}  failed: {r['error']}")
        else:
            lines.append(f"{r['method']:<{name_width}}"
                         + "".join(f"{as_float(r.get(c.key)):>{width}.4f}" for c in columns))
    return "\n".join(lines)


def side_by_side_section(
    result: Any,
    x: torch.Tensor,
    indices: Sequence[int] = (0, 1, 2, 3),
    *,
    names: Sequence[str] | None = None,
    A: torch.Tensor | None = None,
    threshold: float = 0.5,
    label: Label = _same,
) -> Section:
    """For each of a few images, every method's explanation side by side, as a report :class:`Section`.

    One row of panels per image: the picture; for each concept method, the region of the concept that
    contributes most to the target logit on that image (ICE's heatmap: the region bright, the rest dimmed),
    captioned with that concept's share of the logit; for minimal masks, the kept pixels.

    Parameters
    ----------
    result
        The comparison (see the module docstring): ``explainers``, ``masks``, ``mask_indices``.
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
    label
        The name a method is shown under.

    Returns
    -------
    Section
        Anchor ``"side-by-side"``, one figure ``side_by_side_<r>.png`` per shown image.
    """
    from matplotlib.figure import Figure

    idx = [int(i) for i in indices if 0 <= int(i) < int(x.shape[0])]
    if not idx:
        raise ParameterError(f"indices {list(indices)!r} select no image of the {x.shape[0]} compared")
    if not result.explainers and result.masks is None:
        raise ParameterError("the comparison has no fitted method to show (every method failed)")
    preset = next((getattr(ex.split, "preset", None) for ex in result.explainers.values()), None)
    pics = figures.to_pictures(x[idx], preset)
    where = {int(i): j for j, i in enumerate(result.mask_indices)}
    # one explain() per method on the selected images only; its maps are at the images' resolution
    local = {m: ex.explain(x[idx], A=None if A is None else A[idx]) for m, ex in result.explainers.items()}
    images: dict[str, Any] = {}
    parts = []
    for r, i in enumerate(idx):
        panels: list[tuple[str, Any]] = [("image", pics[r])]
        lines = []
        for m, loc in local.items():
            c = loc.contributions[r]
            j = int(c.argmax())
            logit = float(loc.logits[r])
            panels.append((f"{label(m)}: concept {j}",
                           figures.heatmap_overlay(pics[r].transpose(2, 0, 1), loc.maps[r, j], threshold)))
            lines.append(f"{label(m)}: concept {j} adds {float(c[j]):+.2f} to the logit {logit:.2f}")
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
        name = names[i] if names is not None and i < len(names) else f"image {i}"
        items = "".join(f"<li>{escape(t)}</li>" for t in lines)
        parts.append(f'<figure class="side"><img src="img/{fname}" alt="every method on {escape(name)}" '
                     f'style="max-width:100%;height:auto"><figcaption>{escape(name)}<ul>{items}</ul>'
                     "</figcaption></figure>")
    html = ("<p>The same images through every method: for each concept method the region of the concept "
            "that adds most to the class logit on that image, for the masks the pixels kept. Where methods "
            "agree, the explanation is robust; where they differ, trust the one with the better numbers "
            "above.</p>" + "".join(parts))
    return Section("Side by side", html, anchor="side-by-side", images=images)


def masks_section(result: Any, x: torch.Tensor, names: Sequence[str] | None, *, model: Any = None,
                  baselines: dict[str, torch.Tensor] | None = None,
                  comparison: Sequence[dict[str, Any]] | None = None) -> Section:
    """The compared masks: each masked image beside the baselines binarised at the same area.

    The numbers are measured by the caller (:func:`conceptlens.workflows.compare.write_report`: Grad-CAM,
    one backward pass; occlusion, ~30× slower, is left to ``conceptlens mask``); this section runs nothing.

    Parameters
    ----------
    result
        The comparison, with ``masks`` and ``mask_indices`` (see the module docstring).
    x
        ``[N,3,H,W]`` the compared images.
    names
        ``N`` image names (None: ``"image i"``).
    model
        The classifier, for its class names and preset only.
    baselines
        ``{name: saliency [n,1,H,W]}`` of the masked images ``x[mask_indices]``.
    comparison
        Rows of :func:`conceptlens.workflows.masks.equal_area_rows` for those images.
    """
    from conceptlens.report.sections.masks import mask_section

    idx = list(result.mask_indices)
    sub_names = [names[i] for i in idx] if names is not None else [f"image {i}" for i in idx]
    return mask_section(result.masks, x[idx], names=sub_names, baselines=baselines, model=model,
                        comparison=comparison, preset=getattr(model, "preset", None))
