"""Benchmarks that report ratios and quality numbers measured in the same run, written as JSON.

Nothing in the library imports this package; peers (scikit-learn) are imported behind a clear error.

``conceptlens bench fidelity``
    ICE's comparison of reducers (seed 002): fid_c and fid_r for NMF, PCA and k-means at k = 5, 10, 25
    on the demo data (EfficientNet-Lite0, crops of the sample photos, target = the class of 'chelsea').
``conceptlens bench nmf``
    Our NMF against scikit-learn's (cd and mu solvers) on the same matrix, same process.
``conceptlens bench face``
    FACE's λ sweep (MSE, KL, accuracy, C-Ins, C-Del, C-Gini, sparsity, stability) with ICE and CRAFT as the
    λ = 0 reference rows, on EfficientNet-Lite0 (demo crops) and on the ground-truth world (also writes
    ``face.md`` and ``face.png``).
``conceptlens bench groundtruth``
    The ground-truth leaderboard on the synthetic concept world.
``conceptlens bench masks``
    Minimal masks against occlusion and Grad-CAM at equal area on EfficientNet-Lite0 and the concept world
    (also writes ``masks.md``).
``conceptlens bench eddp``
    EDDP (paper and legacy losses) against the planted oracle filters, the raw signal directions and
    spherical k-means on planted direction pairs, over a grid of signal correlation, distractor variance
    and on-rate (also writes ``eddp.md``).
``conceptlens bench load``
    The demo's stages and the NMF fit against scikit-learn, alone and beside ``--busy`` CPU-bound processes.
``conceptlens bench scale``
    ICE, CRAFT and FACE on 100 and 1,000 generated images streamed from a DataLoader (EfficientNet-Lite0):
    extraction and the rest against the bare forward pass, peak resident memory (one process per run).
``conceptlens bench summary``
    Rewrites ``summary.md``: every benchmark's headline ratio from the JSON files (``all`` ends with it).
``conceptlens bench sobol``
    CRAFT's Sobol importance (k = 10, 32 designs) against the bare head calls it needs, same batch shapes.
``conceptlens bench craft``
    CRAFT end to end and its crop extraction against the bare forward pass of the same crops, and against
    Xplique's ``CraftTorch`` when the optional ``peers`` extra is installed.

Every result is written to ``<out>/<name>.json`` (atomic) with the library versions and the machine's
thread count, and printed as a table.
"""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

from conceptlens._io import write_json as _write_json
from conceptlens._version import __version__
from conceptlens.errors import ParameterError

__all__ = ["run", "write_json", "env", "peer", "BENCHES"]

#: Benchmark name → (module, entry function ``f(quick=…, out=…) -> payload``); modules load on demand.
BENCHES: dict[str, tuple[str, str]] = {
    "fidelity": ("conceptlens.bench.fidelity", "run_benchmark"),
    "nmf": ("conceptlens.bench.nmf", "run"),
    "groundtruth": ("conceptlens.bench.groundtruth", "run_benchmark"),
    "face": ("conceptlens.bench.face", "run_benchmark"),
    "masks": ("conceptlens.bench.masks", "run_benchmark"),
    "sobol": ("conceptlens.bench.sobol", "run_benchmark"),
    "load": ("conceptlens.bench.load", "run_benchmark"),
    "eddp": ("conceptlens.bench.eddp", "run_benchmark"),
    "scale": ("conceptlens.bench.scale", "run_benchmark"),
    "craft": ("conceptlens.bench.craft", "run_benchmark"),
}


def peer(module: str, package: str) -> Any:
    """Import a peer library the benchmarks compare against, or say how to install it (ParameterError)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ParameterError(f"this benchmark compares against {package}, which is not installed: "
                             f"pip install {package} (or pip install -e '.[bench]')") from exc


def env() -> dict[str, Any]:
    """The environment a result was measured in: versions, threads, machine, load average."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        load = []
    return {"conceptlens": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version(), "loadavg": load}


def write_json(out: Path | str, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the environment) to ``out/name.json`` atomically; returns the path."""
    return _write_json(Path(out) / f"{name}.json", {"benchmark": name, "env": env(), **payload})


def run(what: str = "all", *, quick: bool = False, out: Path | str = Path("bench/results"),
        busy: int | None = None) -> dict[str, Any]:
    """Run one benchmark by name (or ``"all"``); returns their payloads by name.

    Parameters
    ----------
    what
        A key of :data:`BENCHES`, ``"all"`` (then also ``summary.md``) or ``"summary"`` (only that; both
        also rewrite the summary and scale blocks of ``README.md`` in the working folder, when it has them).
    quick
        Small sizes (seconds instead of minutes; the tests use it).
    out
        Folder of the JSON (and markdown / PNG) results.
    busy
        ``bench load`` only: competing CPU-bound processes (default 1).
    """
    if what == "summary":
        from conceptlens.bench.summary import write_summary

        return {"summary": str(write_summary(out, readme="README.md"))}
    names = list(BENCHES) if what == "all" else [what]
    for n in names:
        if n not in BENCHES:
            raise ParameterError(f"unknown benchmark {n!r}; choose one of {', '.join(BENCHES)}, 'all' or "
                                 "'summary'")
    out = Path(out)
    os.makedirs(out, exist_ok=True)
    results = {}
    for n in names:
        module, entry = BENCHES[n]
        kw = {"busy": busy} if n == "load" and busy is not None else {}
        results[n] = getattr(importlib.import_module(module), entry)(quick=quick, out=out, **kw)
    if what == "all":
        from conceptlens.bench.summary import write_summary

        results["summary"] = str(write_summary(out, readme="README.md"))
    return results
