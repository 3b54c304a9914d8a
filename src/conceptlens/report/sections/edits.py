"""The "Concept edits" section: what the model does without each concept.

Notation: ``A [N,h,w,C]`` the report images' activations, ``k`` concepts, ``j`` a concept's index in the
bank, ``Δ [N,k]`` the change of the target logit on each image when concept ``j`` is removed
(:meth:`conceptlens.ConceptExplainer.edit`). The report adds this section by default for methods that
declare ``"edits"`` in ``report_sections`` (EDDP); how the removal works follows the method's ``edit_rule``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from conceptlens._check import fmt_num
from conceptlens.errors import ParameterError
from conceptlens.report import figures
from conceptlens.report.base import Section, short, signed

__all__ = ["edit_section", "edit_deltas"]


def edit_deltas(ex: Any, A: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(Δ [N,k], flips [k])``: the target logit's change on each image when each concept is removed, and
    the number of images whose top-1 class changes (additive over batches of images)."""
    k = int(ex.concepts_.shape[0])
    deltas = np.zeros((int(A.shape[0]), k))
    flips = np.zeros(k, dtype=np.int64)
    for j in range(k):  # one batched edit per concept (k is small); each covers every image
        r = ex.edit(A=A, remove=[j])
        deltas[:, j] = r.delta_target.detach().cpu().double().numpy()
        flips[j] = int(r.flipped.sum())
    return deltas, flips


def edit_section(ex: Any, A: torch.Tensor | None, names: Sequence[str], *, n_columns: int,
                 deltas: tuple[np.ndarray, np.ndarray] | None = None) -> Section:
    """The "Concept edits" section: the target logit's change on each image when each concept is removed.

    Parameters
    ----------
    ex
        A fitted explainer (any method: :meth:`ConceptExplainer.edit` has a counterpart for each).
    A
        ``[N,h,w,C]`` activations of the report's images (None when ``deltas`` is given).
    names
        ``N`` image names.
    n_columns
        Per-image changes are tabulated for the first ``n_columns`` images (all are in the chart).
    deltas
        :func:`edit_deltas` of the images, computed already (e.g. batch by batch over a source).
    """
    from markupsafe import escape

    if deltas is None:
        if A is None:
            raise ParameterError("edit_section needs the activations A or their edit deltas")
        deltas = edit_deltas(ex, A)
    deltas, flips = deltas
    N = int(deltas.shape[0])
    importance = ex.importance_.detach().cpu().numpy().astype(np.float64)
    order = [int(j) for j in np.argsort(-importance, kind="stable")]
    target = str(ex.target_name_)
    fig = figures.edit_figure(
        deltas[:, order], [f"concept {j}" for j in order],
        xlabel=f"change of the “{short(target, 30)}” logit\nwhen the concept is removed")
    if getattr(type(ex.decomposition_), "edit_rule", "reconstruction") == "own":
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
    head = "".join(f"<th scope=\"col\">Δ {escape(short(names[i], 18))}</th>" for i in range(m))
    rows = []
    for rank, j in enumerate(order):
        dj = deltas[:, j]
        cells = "".join(f"<td class=\"num\">{signed(float(dj[i]))}</td>" for i in range(m))
        neg = " class=\"num neg\"" if dj.mean() < 0 else " class=\"num\""
        rows.append(
            f"<tr><td class=\"num\">{rank + 1}</td><td class=\"name\"><a href=\"#concept-{j}\">concept {j}"
            f"</a></td><td class=\"num\">{fmt_num(float(importance[j]))}</td>"
            f"<td{neg}>{signed(float(dj.mean()))}</td>"
            f"<td class=\"num\">{signed(float(dj.min()))} to {signed(float(dj.max()))}</td>"
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
