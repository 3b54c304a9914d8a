"""``conceptlens bench groundtruth``: the ground-truth leaderboard, written as JSON, markdown and a figure.

The numbers come from :func:`conceptlens.world.leaderboard.run` (every registered decomposition and
importance estimator scored on the synthetic concept world, with the oracle and random reference rows);
this module only chooses the benchmark's reference method, renders the tables through
:class:`conceptlens.report.table.Table` and writes ``groundtruth.json``, ``groundtruth.md`` and
``groundtruth.png`` into the results folder (atomically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conceptlens._io import atomic_write
from conceptlens.bench import write_json
from conceptlens.report.table import Column, Table
from conceptlens.world import leaderboard

__all__ = ["REFERENCE", "run_benchmark", "markdown", "figure", "write"]

#: The decomposition whose bank is scored under every importance estimator and whose fit time the other
#: rows are divided by: the library's default method.
REFERENCE = "nmf"


def _ref(payload: dict[str, Any]) -> str:
    return payload["config"].get("reference") or REFERENCE


def _label(name: str) -> str:
    """The method's display name (its declared label), or ``name`` when it is not registered."""
    from conceptlens import decompose

    try:
        return decompose.get(name).display_name()
    except Exception:  # noqa: BLE001 - a payload written by another version may name a removed method
        return name


def _columns(ref: str) -> list[Column]:
    """The leaderboard's columns (↑ higher is better, ↓ lower is better)."""
    return [
        Column("method", "method", kind="str"),
        Column("importance", "importance", kind="str"),
        Column("iou", "IoU ↑", better="max"),
        Column("iou_key", "IoU key ↑", better="max"),
        Column("pointing", "pointing ↑", better="max"),
        Column("pointing_key", "pointing key ↑", better="max"),
        Column("recall_at_2", "recall@2 ↑", better="max"),
        Column("spearman", "Spearman ↑", better="max"),
        Column("c_deletion", "C-Del ↓", digits=2, better="min"),
        Column("c_insertion", "C-Ins ↑", digits=2, better="max"),
        Column("fid_r", "Fid_r ↓", better="min"),
        Column("sparsity", "sparsity", digits=2),
        Column("fit_s", "fit s", digits=2),
        Column(f"fit_vs_{ref}", f"fit ÷ {ref}", digits=1),
        Column("note", "note", kind="str"),
    ]


#: The importance estimators' table (the reference's bank; time: the estimator's).
IMPORTANCE_COLUMNS = [
    Column("importance", "estimator", kind="str"),
    Column("recall_at_2", "recall@2 ↑", better="max"),
    Column("spearman", "Spearman ↑", better="max"),
    Column("c_deletion", "C-Del ↓", digits=2, better="min"),
    Column("c_insertion", "C-Ins ↑", digits=2, better="max"),
    Column("fit_s", "time s", digits=3),
    Column("note", "note", kind="str"),
]


def _split_text(cfg: dict[str, Any]) -> str:
    """How the images were split (a payload written before the held-out split says nothing)."""
    if "n_held_out_per_class" not in cfg:
        return ""
    return (f"Each class's explainer is fitted on {cfg['n_fit_per_class']} images and every score is "
            f"measured on the other {cfg['n_held_out_per_class']} (held out, seeded), with the codes of "
            "encode (no KL term). ")


def markdown(payload: dict[str, Any]) -> str:
    """The leaderboard and the importance-estimator table as markdown (from a :func:`run_benchmark` payload).

    The best value of each column among the methods (not the reference rows) is in bold.
    """
    cfg = payload["config"]
    ref = _ref(payload)
    rows = []
    for r in payload["rows"]:
        note = r.get("error") or r.get("note") or ("reference" if r["kind"] == "reference" else "")
        rows.append({**r, "note": str(note).replace("|", "/").replace("\n", " ")})
    methods = [i for i, r in enumerate(rows) if r["kind"] != "reference"]
    lines = [
        f"Ground-truth leaderboard: {len(cfg['classes'])} classes × {cfg['n_per_class']} images, "
        f"k = {cfg['n_concepts']}, layer {cfg['layer']} ({cfg['layer_grid'][0]}×{cfg['layer_grid'][1]}), "
        f"seed {cfg['seed']}; means over classes. {_split_text(cfg)}IoU at the best threshold per matched "
        "pair; ↑ higher is better, ↓ lower is better; the best method of each column in bold.",
        "",
        Table(_columns(ref), rows, best_of=methods).markdown(),
    ]
    if payload.get("importance_rows"):
        imp = [{**r, "note": str(r.get("error") or r.get("note") or "").replace("|", "/")}
               for r in payload["importance_rows"]]
        lines += [
            "",
            f"Importance estimators on the same {_label(ref)} bank (localisation is the bank's; time: the "
            "estimator's):",
            "",
            Table(IMPORTANCE_COLUMNS, imp).markdown(),
        ]
    return "\n".join(lines) + "\n"


def figure(payload: dict[str, Any]) -> Any:
    """A matplotlib ``Figure`` (Agg canvas) of the leaderboard: localisation and importance per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(payload["rows"])
    labels = [r["method"] for r in rows]
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})

    def bars(ax: Any, cols: list[tuple[str, str]], items: list[dict[str, Any]], names: list[str]) -> None:
        width = 0.8 / len(cols)
        for j, (col, label) in enumerate(cols):
            vals = [r.get(col) if r.get(col) is not None else 0.0 for r in items]
            offset = (j - (len(cols) - 1) / 2) * width
            ax.bar([p + offset for p in range(len(items))], vals, width, label=label)
            for p, r in enumerate(items):
                if r.get(col) is None:  # undefined (failed method, degenerate importance): say so
                    ax.text(p + offset, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        # headroom above 1 for the legend, so that it never hides a bar
        ax.set_ylim(min(0.0, *[r.get(c) or 0.0 for r in items for c, _ in cols]) - 0.02, 1.22)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncol=len(cols), frameon=False)

    loc_cols = [("iou", "IoU"), ("iou_key", "IoU key"), ("pointing", "pointing"),
                ("pointing_key", "pointing key")]
    bars(ax1, loc_cols, rows, labels)
    ax1.set_title("concept localisation (Hungarian-matched)")
    imp_items = [r for r in rows if r["kind"] != "reference" or r["method"] == "random"]
    imp_items += [{**r, "method": f"{r['method']}/{r['importance']}"}
                  for r in payload.get("importance_rows", [])]
    bars(ax2, [("recall_at_2", "recall@2"), ("spearman", "Spearman")], imp_items,
         [r["method"] for r in imp_items])
    ax2.set_title("importance vs true relevance")
    cfg = payload["config"]
    fig.suptitle(f"conceptlens ground truth: {len(cfg['classes'])} classes × {cfg['n_per_class']} images, "
                 f"k = {cfg['n_concepts']}", fontsize=10)
    fig.tight_layout()
    return fig


def write(payload: dict[str, Any], table: str, out: Path | str) -> dict[str, Path]:
    """Write ``groundtruth.json`` (with the environment), ``.md`` and ``.png`` into ``out`` (atomically)."""
    from conceptlens.report.figures import save_png

    out = Path(out)
    paths = {"json": write_json(out, "groundtruth", payload)}
    paths["md"] = atomic_write(out / "groundtruth.md", table)
    paths["png"] = save_png(figure(payload), out / "groundtruth.png", dpi=110)
    return paths


def run_benchmark(quick: bool = False, out: Path | str = Path("bench/results"), *, seed: int = 0,
                  methods: list[str] | None = None, n_per_class: int | None = None,
                  n_concepts: int | None = None, classes: list[int] | None = None,
                  verbose: bool = True) -> dict[str, Any]:
    """Score every registered method on the concept world; write the JSON, the tables and the figure.

    Parameters
    ----------
    quick
        Two classes, 16 images each, ``k = 6``, shorter fits (each method's ``quick_params``) instead of
        every class with 100 images each, ``k = 10``.
    out
        Folder for ``groundtruth.json``, ``groundtruth.md`` (the tables) and ``groundtruth.png`` (a plot).
    seed, methods, n_per_class, n_concepts, classes
        See :func:`conceptlens.world.leaderboard.run`.
    verbose
        Print progress lines and the table.

    Returns
    -------
    dict
        The payload of :func:`conceptlens.world.leaderboard.run` (with :data:`REFERENCE` as its reference).
    """
    payload = leaderboard.run(quick, seed=seed, methods=methods, n_per_class=n_per_class,
                              n_concepts=n_concepts, classes=classes, reference=REFERENCE, verbose=verbose)
    table = markdown(payload)
    write(payload, table, out)
    if verbose:
        print(table, flush=True)
    return payload
