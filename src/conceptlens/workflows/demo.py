"""The demo: every method compared on EfficientNet-Lite0 and the bundled sample photos.

Notation: ``photos [P,3,S,S]`` the 13 bundled photos at the model's input size ``S`` (224), ``crops
[M,3,S,S]`` their crops of ``patch`` pixels resized to ``S``, ``x = [photos; crops]`` the compared images,
``A = g(x) [P+M,h,w,C]`` their activations at the layer ``"auto"`` (computed once, shared by every method),
``c`` the class the model predicts on the first photo ('chelsea', the cat).

Budgets come from the methods' declarations, never from their names: a method that fits on crops
(``fit_on = "crops"``) takes the demo's crops as its crops (``patch_size`` = the image side: one crop per
image, one forward pass each, instead of cutting new crops out of every image); every method gets its
``demo_params`` (EDDP: 300 steps, no alignment term); a method that declares a ``sweep_param`` (FACE's λ)
adds its λ curve to the report when ``kl_weights`` are given. The masks explain the first ``masks`` photos.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from conceptlens import decompose
from conceptlens._check import is_finite
from conceptlens._io import atomic_write, splice
from conceptlens.report.base import Section
from conceptlens.split.model_split import ModelSplit
from conceptlens.workflows.compare import (
    ALIASES,
    CompareResult,
    check_methods,
    compare,
    markdown_table,
    print_table,
    reading,
    write_report,
)

__all__ = ["DEMO_METHODS", "DemoResult", "demo_params", "run_demo", "sweep_sections", "splice_readme",
           "stage_table", "README_MARKERS"]

#: The methods the demo compares, in table order.
DEMO_METHODS = "ice,pca,kmeans,craft,face,eddp,masks"


@dataclass(frozen=True)
class DemoResult:
    """What the demo made.

    Attributes
    ----------
    compare : CompareResult
        The comparison (rows, fitted explainers, masks).
    path : pathlib.Path
        ``out/index.html``.
    seconds : float
        Wall time of the whole demo.
    stages : dict[str, float]
        Wall time of each stage in seconds, in order: ``load`` (model and images), ``extract`` (``g`` on
        every image), ``fit <method>`` per compared method (from the comparison's rows), ``metrics`` (the
        rest of the comparison), ``sweep`` (the λ curve), ``report``.
    """

    compare: CompareResult
    path: Path
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


class _Stopwatch:
    """Wall time of consecutive stages: ``lap(name)`` closes the stage that ran since the previous lap."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = now - self.t
        self.t = now


def stage_table(stages: dict[str, float]) -> str:
    """The demo's per-stage timing as aligned text lines (stage, seconds, share of the total)."""
    total = sum(stages.values()) or 1.0
    w = max(len(k) for k in stages) if stages else 5
    lines = [f"{'stage':<{w}}  {'s':>6}  share"]
    lines += [f"{k:<{w}}  {v:6.1f}  {100 * v / total:4.0f} %" for k, v in stages.items()]
    return "\n".join(lines)


def _decomposition(method: str) -> type[decompose.Decomposition] | None:
    """The registered class behind a compared method name (None for ``"masks"``, not a decomposition)."""
    name = ALIASES.get(method, method)
    return decompose.get(name) if name in decompose.available() else None


def demo_params(methods: Sequence[str], image_side: int) -> dict[str, dict[str, Any]]:
    """Per compared method, the constructor arguments that fit the demo's budget (methods without any are
    left out).

    Parameters
    ----------
    methods
        Validated, lower-case method names (``"ice"``, ``"craft"``, ``"masks"``, …).
    image_side
        The side in pixels of the compared images: a crop-fitted method's ``patch_size``.

    Returns
    -------
    dict
        Method → ``{"patch_size": image_side}`` for ``fit_on = "crops"``, updated with its ``demo_params``.
    """
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        cls = _decomposition(m)
        if cls is None:
            continue
        p: dict[str, Any] = {"patch_size": int(image_side)} if cls.fit_on == "crops" else {}
        p.update(cls.demo_params)
        if p:
            out[m] = p
    return out


def sweep_sections(kl_weights: str, methods: Sequence[str], A: torch.Tensor, split: ModelSplit, target: int,
                   n_concepts: int, seed: int) -> list[Section]:
    """The λ curve (FACE's sweep, with ICE as the λ = 0 reference) as a report section, when a compared
    method declares a ``sweep_param`` and ``kl_weights`` (comma-separated λ values) are given.

    Parameters
    ----------
    kl_weights
        ``"0,0.1,1"``; empty: no section.
    methods
        Validated, lower-case method names.
    A
        ``[N,h,w,C]`` activations of the compared images.
    split
        The model cut at the layer of ``A`` (its head ``h`` scores the fits).
    target
        The class.
    n_concepts, seed
        As in the comparison.
    """
    if not kl_weights.strip() or not any((cls := _decomposition(m)) is not None and cls.sweep_param
                                         for m in methods):
        return []
    from conceptlens.report.sections.sweep import sweep_section
    from conceptlens.workflows.sweep import face_sweep, parse_kl_weights

    sw = face_sweep(A, split.h, target, parse_kl_weights(kl_weights), n_concepts=n_concepts, seed=seed,
                    references=("ice",))
    return [sweep_section(sw)]


def run_demo(
    out: str | os.PathLike[str] = "report",
    methods: str | Sequence[str] = DEMO_METHODS,
    n_concepts: int = 10,
    patch: int = 112,
    masks: int = 1,
    kl_weights: str = "0,0.1,1",
    seed: int = 0,
    echo: Callable[[str], Any] = print,
    *,
    table: str | os.PathLike[str] | None = None,
    readme: str | os.PathLike[str] | None = None,
) -> DemoResult:
    """Compare every method on the bundled photos and their crops; write the report, print the table.

    Parameters
    ----------
    out
        Folder for ``index.html`` (the comparison), ``<method>/index.html`` and ``compare.csv``.
    methods
        Comma-separated methods to compare.
    n_concepts
        ``k`` of every method.
    patch
        Crop size in pixels of the 224-px photos (each crop is resized to the input).
    masks
        Photos explained by minimal masks (an optimisation each; at least 1).
    kl_weights
        FACE's λ values for the report's λ curve (``""``: none).
    seed
        Seed of every method and metric.
    echo
        Prints one line (the command line passes ``typer.echo``).
    table
        Also write the markdown table (``OUT/compare.md``) here (``make demo``: ``bench/results/demo.md``).
    readme
        Replace the table between the README's :data:`README_MARKERS` with it (``make demo``: README.md),
        so that the README shows what the command measured.

    Returns
    -------
    DemoResult
    """
    from conceptlens.io import demo_set, models, sample_images

    t0 = time.time()
    watch = _Stopwatch()
    model = models.load("efficientnet_lite0")
    photos, names = sample_images(model.preset, return_names=True)
    with torch.no_grad():
        target = int(model(photos[:1]).argmax(1))
    crops, crop_names = demo_set(model.preset, patch_size=patch)
    x = torch.cat([photos, crops])
    all_names = [*names, *crop_names]
    echo(f"{len(names)} photos + {crops.shape[0]} crops of {patch} px; target = "
         f"{model.preset.classes[target]!r} (the class predicted for 'chelsea')")
    split = ModelSplit(model, "auto")
    watch.lap("load")
    A = split.g(x)
    watch.lap("extract")
    names_m = check_methods(methods)  # validated, lower-case, as compare() reads them
    params = demo_params(names_m, int(x.shape[-1]))
    res = compare(split, x, target, methods=methods, n_concepts=n_concepts, seed=seed, A=A,
                  mask_images=min(max(masks, 1), len(names)), method_params=params or None)
    watch.lap("compare")
    # stages that add up to the wall time: the methods fitted side by side are one stage (their wall time)
    fits = {f"fit {r['method']}": float(r["seconds"]) for r in res.rows
            if is_finite(r.get("seconds")) and r["method"] not in res.side_by_side}
    if res.side_by_side:
        fits[f"fit {' ∥ '.join(res.side_by_side)}"] = res.side_by_side_s
    compare_s = watch.stages.pop("compare")
    watch.stages.update(fits)
    watch.stages["metrics"] = max(0.0, compare_s - sum(fits.values()))
    extra = sweep_sections(kl_weights, names_m, A, split, res.target, n_concepts, seed)
    watch.lap("sweep")
    path = write_report(res, x, out, names=all_names, A=A, side_by_side=range(min(4, len(names))),
                        extra_sections=extra)
    print_table(res, echo)
    md = markdown_table(res) + "\n" + " ".join(reading(res)) + "\n"
    atomic_write(Path(out) / "compare.md", md)
    if table is not None:
        atomic_write(table, md)
    if readme is not None:
        splice_readme(readme, md)
    watch.lap("report")
    seconds = time.time() - t0
    echo(stage_table(watch.stages))
    echo(f"report: {Path(path).resolve()}  ({seconds:.0f} s)")
    return DemoResult(compare=res, path=Path(path), seconds=seconds, stages=watch.stages)


#: The lines between which the README holds the demo's table (written by :func:`splice_readme`).
README_MARKERS = ("<!-- demo-table: written by `make demo` (bench/results/demo.md); do not edit -->",
                  "<!-- end demo-table -->")


def splice_readme(readme: str | os.PathLike[str], table_md: str,
                  markers: tuple[str, str] = README_MARKERS) -> Path:
    """Put ``table_md`` between the ``markers`` lines of ``readme`` (atomically; default: the demo table's
    :data:`README_MARKERS`); ParameterError when the markers are missing."""
    return splice(readme, markers, table_md)
