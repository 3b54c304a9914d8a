"""The "FACE λ sweep" report section and its figure: MSE, KL and faithfulness against λ.

Notation: ``λ`` the weight of FACE's KL term (``kl_weight``), ``h`` the head, ``U W`` a factorisation of
the activations ``A``. The section shows a sweep's result (:class:`conceptlens.workflows.sweep_result.
SweepResult`, read duck-typed: the report sits below the workflows that compute it) as the λ curves, the
table of its one column spec and the verdict on the seed's claim. ``λ = 0`` has no place on a log axis:
it is drawn 1.5 decades left of the smallest positive ``λ``, behind an axis break.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from conceptlens._check import as_float
from conceptlens.report.base import Section

__all__ = ["sweep_figure", "sweep_section"]


def _x_positions(lams: Sequence[float]) -> tuple[Callable[[float], float], float, list[float]]:
    """Map ``λ`` to a log10 axis where ``λ = 0`` sits 1.5 decades left of the smallest positive ``λ``."""
    pos = sorted(v for v in lams if v > 0)
    if not pos:
        return (lambda v: 0.0), 0.0, []
    lo, hi = math.log10(pos[0]), math.log10(pos[-1])
    x0 = lo - 1.5
    decades = [float(e) for e in range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1)]
    if len(decades) > 8:  # too many ticks to read: every other decade
        decades = decades[::2]
    return (lambda v: math.log10(v) if v > 0 else x0), x0, decades


def sweep_figure(results: Sequence[Any], titles: Sequence[str] | None = None) -> Any:
    """The λ curves: one row of three panels per sweep (MSE; KL; accuracy, C-Ins, C-Del and stability).

    ``λ`` is on a log axis; ``λ = 0`` (FACE at λ = 0) is drawn at the left edge, 1.5 decades before the
    smallest positive ``λ``, behind an axis break; ICE and CRAFT are hollow markers at that position.

    Parameters
    ----------
    results : sequence of SweepResult
        One :class:`~conceptlens.workflows.sweep_result.SweepResult` per row of panels (read duck-typed:
        ``face_rows()``, ``reference(name)``, ``label(name)``, ``config``).
    titles : sequence of str, optional
        Row titles; default: each result's ``config["dataset"]``.

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas (no pyplot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = max(len(results), 1)
    fig = Figure(figsize=(12, 3.4 * n), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    ref_style = {"ice": ("s", -0.28), "craft": ("^", 0.28)}
    for row, res in enumerate(results):
        face = res.face_rows()
        X, x0, decades = _x_positions([float(r["kl_weight"]) for r in face])
        xs = [X(float(r["kl_weight"])) for r in face]
        panels = [
            [("mse", "MSE", "tab:blue")],
            [("kl", "KL", "tab:red")],
            [
                ("accuracy", "accuracy", "tab:green"),
                ("c_ins", "C-Ins", "tab:purple"),
                ("c_del", "C-Del", "tab:orange"),
                ("stability", "stability", "tab:gray"),
            ],
        ]
        for col, (ax, series) in enumerate(zip(axes[row], panels, strict=True)):
            for key, label, colour in series:
                ys = [as_float(r[key]) for r in face]
                if not any(math.isfinite(y) for y in ys):
                    continue
                if decades and len(xs) > 1 and xs[0] == x0:
                    # dashed across the axis break: λ = 0 is not a point of the log scale
                    ax.plot(xs[:2], ys[:2], "--", color=colour, lw=1)
                    ax.plot(xs[:1], ys[:1], "o", color=colour, ms=4)
                    ax.plot(xs[1:], ys[1:], "o-", color=colour, label=label, ms=4)
                else:
                    ax.plot(xs, ys, "o-", color=colour, label=label, ms=4)
                for ref, (marker, dx) in ref_style.items():
                    rr = res.reference(ref)
                    if rr is not None and math.isfinite(as_float(rr[key])):
                        ax.plot([x0 + dx], [as_float(rr[key])], marker, mfc="none", color=colour, ms=7)
            ax.set_xticks([x0, *decades])
            ax.set_xticklabels(["0", *[f"$10^{{{int(e)}}}$" for e in decades]])
            if decades:
                ax.set_xlim(x0 - 0.6, max(xs) + 0.4)
                # axis break between λ = 0 and the first decade shown
                brk = x0 + 0.75
                ax.plot(
                    [brk - 0.1, brk + 0.1],
                    [0, 0.02],
                    color="black",
                    lw=0.8,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
                ax.plot(
                    [brk + 0.05, brk + 0.25],
                    [0, 0.02],
                    color="black",
                    lw=0.8,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
            ax.set_xlabel("λ (KL weight)")
            ax.grid(alpha=0.3)
            if col == 2:
                ax.set_ylim(-0.03, 1.05)
            if row == 0 or col == 2:
                handles, _ = ax.get_legend_handles_labels()
                extra = [
                    Line2D([], [], marker=m, ls="none", mfc="none", color="black", label=res.label(r))
                    for r, (m, _) in ref_style.items()
                    if res.reference(r) is not None
                ]
                ax.legend(handles=handles + extra, fontsize=7, loc="best", frameon=False)
        title = (titles[row] if titles and row < len(titles) else "") or str(res.config.get("dataset", ""))
        axes[row][0].set_title(f"{title}: MSE" if title else "MSE", fontsize=9, loc="left")
        axes[row][1].set_title("KL(softmax h(A) ‖ softmax h(UW))", fontsize=9, loc="left")
        axes[row][2].set_title("faithfulness, held-out images (FACE's definitions)", fontsize=9, loc="left")
    fig.tight_layout()
    return fig



def _split_text(cfg: dict[str, Any]) -> str:
    """How the sweep's images were split and which codes were scored (the result's ``config``)."""
    if "n_held_out_images" not in cfg:  # a result written before the held-out split
        return "Every number is measured on the codes of the images the bank was fitted on."
    where = (f"fitted on {cfg['n_fit_images']} images and scored on the {cfg['n_held_out_images']} held-out "
             "ones" if as_float(cfg.get("holdout")) > 0 else "fitted and scored on the same images")
    return (f"Every method is {where}, on plain codes (non-negative least squares with the bank frozen, no "
            "KL term, as the authors project new images). The KL-fitted columns are a labelled extra: the "
            "fit's own codes of the fitted images, which FACE optimises against those images' own "
            "predictions.")


def sweep_section(result: Any) -> Section:
    """A report :class:`~conceptlens.report.base.Section`: the λ curves, the table and the verdict.

    Parameters
    ----------
    result : SweepResult
        A :class:`~conceptlens.workflows.sweep_result.SweepResult` (read duck-typed: ``config``,
        ``as_table()``, ``claim()``, ``figure()``, ``label(name)``).

    Returns
    -------
    Section
        Title "<method> λ sweep" (FACE's), anchor ``face-sweep``, one image ``face_sweep.png``.
    """
    cfg = result.config
    swept = result.label("face")
    claim = "Claim (the KL term improves faithfulness without hurting much else): " + result.claim()["text"]
    intro = (
        f"{swept} adds λ·KL(softmax h(A) ‖ softmax h(UW)) to NMF's reconstruction error. One fit per λ "
        f"(k = {cfg.get('n_concepts', '?')}, {cfg.get('n_images', '?')} images of "
        f"{cfg.get('dataset', 'the data')}); {result.label('ice')} (plain NMF) and {result.label('craft')} "
        "(NMF on crops) are the λ = 0 references. Accuracy, C-Ins and C-Del are FACE's: top-1 accuracy of "
        "h(UW) on the class's correctly classified images, with concepts inserted or deleted by Sobol "
        "importance. " + _split_text(cfg)
    )
    html = (
        f"<p>{escape(intro)}</p>"
        f'<img src="img/face_sweep.png" alt="{escape(swept)} λ sweep: MSE, KL and faithfulness against λ">'
        f'<div class="table-wrap">{result.as_table().html(mark_best=False, css_class="sweep")}</div>'
        f"<p>{escape(claim)}.</p>"
    )
    return Section(f"{swept} λ sweep", html, anchor="face-sweep", images={"face_sweep.png": result.figure()})
