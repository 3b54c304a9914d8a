"""``conceptlens bench face``: FACE's λ sweep on EfficientNet-Lite0 and on the ground-truth world.

Runs :func:`conceptlens.workflows.sweep.run_sweep` on the two standard data sets
(:mod:`conceptlens.workflows.sweep_data`) and writes ``face.json`` (every row, the settings and the verdict on
the seed's claim, with the environment), ``face.md`` (the tables) and ``face.png`` (the λ curves) to
``bench/results/``. The numbers themselves live there and in the README, not here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from conceptlens._io import atomic_write
from conceptlens.bench import write_json
from conceptlens.report.figures import save_png
from conceptlens.report.sections.sweep import sweep_figure
from conceptlens.workflows.sweep import run_sweep
from conceptlens.workflows.sweep_data import real_sweep_data, world_sweep_data
from conceptlens.workflows.sweep_result import SweepResult

__all__ = ["run_benchmark"]


def run_benchmark(
    quick: bool = False, out: str | os.PathLike[str] = Path("bench/results"), verbose: bool = True
) -> dict[str, Any]:
    """FACE's λ sweep on EfficientNet-Lite0 (demo crops) and the ground-truth world: face.{json,md,png}.

    Every sweep fits on half of the images (seeded, per predicted class) and scores the other half's plain
    codes (see :func:`~conceptlens.workflows.sweep.face_sweep`); the KL-fitted codes of the fitted images
    are only the labelled ``KL-fitted:`` columns.

    Full: all demo crops, ``λ ∈ {0, 1e-5, 1e-3, 1e-2, 1e-1, 1, 10}``, ``k = 10``, with stability, each fit
    capped at 60 s; the world (every class, 20 images each, one bank) at ``k = 10`` and at ``k = 5``: with
    fewer concepts than the world's 8 the reconstruction must leave something out, and the KL term decides
    what. ``quick``: the crops of the first three photos and 8 world images of two classes, ``k = 5``,
    ``λ ∈ {0, 1e-1}``, no stability, short fits (< 60 s on an idle machine).

    Returns
    -------
    dict
        The JSON payload: ``quick``, ``seconds`` and one :meth:`SweepResult.to_dict` per sweep (``lite0``,
        ``world``, and ``world_k5`` when not quick).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        lams: tuple[float, ...] = (0.0, 1e-1)
        params: dict[str, Any] = {"max_iter": 15, "max_time": 5.0}
        real = real_sweep_data(n_photos=3, progress=False)
        world = world_sweep_data(n_per_class=8, target=[0, 1], seed=0)
        plan = [("lite0", real, 5, "EfficientNet-Lite0, demo crops"),
                ("world", world, 5, "ground-truth world")]
    else:
        lams = (0.0, 1e-5, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
        params = {"max_time": 60.0}
        real = real_sweep_data(progress=False)
        world = world_sweep_data(n_per_class=20, target=None, seed=0)
        plan = [("lite0", real, 10, "EfficientNet-Lite0, demo crops, k = 10"),
                ("world", world, 10, "ground-truth world, k = 10"),
                ("world_k5", world, 5, "ground-truth world, k = 5")]
    results: dict[str, SweepResult] = {}
    t0 = time.perf_counter()
    for name, data, k, _ in plan:
        if verbose:
            print(f"FACE λ sweep on {data.config['dataset']}, layer {data.config['layer']}, "
                  f"target {data.config['target_names']}, k = {k}", flush=True)
        res = run_sweep(data, lams, k, 0, with_stability=not quick, n_designs=16 if quick else 32,
                        progress=verbose, **params)
        results[name] = res
        if verbose:
            print(res.claim()["text"], flush=True)
    payload = {"quick": quick, "seconds": time.perf_counter() - t0,
               **{name: r.to_dict() for name, r in results.items()}}
    paths = {"json": write_json(out, "face", payload)}
    tables = [results[n].markdown(f"FACE λ sweep: {t}") for n, _, _, t in plan]
    md = "\n".join(["# FACE λ sweep", "", *tables])
    paths["md"] = atomic_write(out / "face.md", md)
    fig = sweep_figure([results[n] for n, *_ in plan], [t for *_, t in plan])
    paths["png"] = save_png(fig, out / "face.png")
    if verbose:
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return payload
