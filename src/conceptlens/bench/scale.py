"""The pipeline at scale: ICE, CRAFT and FACE on N generated images, against the bare forward pass.

Data: ``N`` generated images (smooth random colour fields at the model's input size, made on the fly by a
DataLoader, so no run holds them all; generated images are fine for timing, not for concepts), the model's
``layer="auto"``, target = the class the model predicts most often, ``k = 10``. Models: EfficientNet-Lite0
(7 × 7 × 1280) for every method and size; timm ``resnet18`` (7 × 7 × 512, NMF) and
``vit_tiny_patch16_224`` (patch tokens 14 × 14 × 192 of ``blocks.10``, signed, so PCA) with random
weights (``pretrained=False``: nothing downloaded) at 1,000 images.

Each row (model, method, N) runs in a fresh process (peak resident memory is a per-process high-water
mark) on one thread (:data:`THREADS`: on a shared 2-core machine a 2-thread run measures its neighbours:
with two other busy processes, OpenMP's spin-waits made NMF's fit of 1,000 images 9× slower, 71 s against
7.9 s, and the forward pass 1.3×), which measures, on the same images, in this order:

* ``forward_s``: the bare forward pass ``model(x)`` over the DataLoader (the peer); only up to
  ``FORWARD_MAX_N`` images (1,000, where the ratio's target is set): the rows above it measure memory and
  the stages, and their ``forward_s`` and ``ratio`` are null;
* the explainer's streamed fit with ``memory_budget`` (default 64 MB: the activations of more than ~250
  EfficientNet images go to the on-disk store; every built-in method fits from it, FACE by mini-batch passes
  over whole images since issue #21; a method without an out-of-core fit gets the default budget, a quarter
  of the RAM), split into ``extract_s`` (reading the images and running ``g`` and ``h`` once),
  ``crops_s`` (CRAFT: cutting and running the crops), ``fit_s`` (the bank) and ``encode_s`` (codes and
  importance);
* ``ratio`` = the whole pipeline over ``forward_s``; CRAFT needs ``1 + crops per image`` forward passes by
  design, so its ratio is also given per forward pass it makes (``ratio_per_pass``);
* ``peak_rss_mb``: ``resource.getrusage`` high-water mark of the process, ``base_rss_mb`` the same
  before the first image (model and libraries loaded, one warm-up image) and ``forward_peak_rss_mb`` after
  the bare forward pass (what batches of 32 images through the network take by themselves);
* ``loadavg``: the machine's load average when the row started (each row is its own measurement).

CRAFT runs 1 + 16 forward passes per image (64-px crops, stride 51, no border-aligned ones, each resized to
224; 1 + 25 with them, before ``border="auto"``): it is measured
up to ``CRAFT_MAX_N`` images. Rows are merged into ``scale.json`` by (model, method, N), so a subset can be
re-measured (``conceptlens bench scale --rows …``); ``scale.md`` (the docs' table) is written from the JSON
by :func:`write_table` after every row and by ``conceptlens bench summary``.

The numbers depend on the machine's load (written with each row): compare ratios, not seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conceptlens.bench import write_json
from conceptlens.bench.scale_table import DEFAULT_MODEL, scale_table, write_table
from conceptlens.errors import ParameterError

__all__ = ["run_benchmark", "run_rows", "measure", "parse_rows", "scale_table", "write_table", "COLUMNS",
           "PLAN"]

METHODS = ("nmf", "face", "craft")  # CRAFT, the slowest (17 passes per image), last
#: Parameters that keep a run within minutes on a laptop CPU (the same for every N).
PARAMS: dict[str, dict[str, Any]] = {"nmf": {"max_iter": 100}, "craft": {"max_iter": 100},
                                     "face": {"max_iter": 20}, "pca": {}}
CRAFT_MAX_N = 1000
FORWARD_MAX_N = 1000
#: Threads of every measured process (see the module docstring).
THREADS = 1
#: The full run: (model, method, N), in the order measured.
PLAN: tuple[tuple[str, str, int], ...] = (
    *((DEFAULT_MODEL, "nmf", n) for n in (100, 1000, 10000)),
    *((DEFAULT_MODEL, "face", n) for n in (100, 1000, 10000)),  # 10,000 only with an out-of-core FACE
    *((DEFAULT_MODEL, "craft", n) for n in (100, 1000)),
    ("timm:resnet18", "nmf", 1000),
    ("timm:vit_tiny_patch16_224", "pca", 1000),  # layer='auto' is a signed token layer: PCA accepts it
)
COLUMNS = ("model", "method", "n_images", "on_disk", "forward_s", "extract_s", "crops_s", "fit_s", "encode_s",
           "ratio", "ratio_per_pass", "peak_rss_mb", "forward_peak_rss_mb", "base_rss_mb")


def _images(n: int, size: int = 224, batch: int = 32) -> Any:
    """A DataLoader of ``n`` generated normalised images ``[≤ batch, 3, size, size]`` (seeded, lazy)."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Generated(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            g = torch.Generator().manual_seed(0)
            for i in range(0, n, batch):
                low = torch.rand(min(batch, n - i), 3, 7, 7, generator=g)
                x01 = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                                      align_corners=False).clamp(0, 1)
                mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
                yield (x01 - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    return DataLoader(Generated(), batch_size=None)


def _out_of_core(method: str) -> bool:
    from conceptlens import decompose
    from conceptlens.stream import fits_store

    return fits_store(decompose.get(method))


def measure(method: str, n: int, memory_budget: str = "64MB", threads: int | None = None,
            model: str = DEFAULT_MODEL, forward: bool = True) -> dict[str, Any]:
    """One (model, method, N) run in this process: the timings and memory the module docstring lists.

    Parameters
    ----------
    method
        A registered concept method (``"nmf"``, ``"face"``, ``"craft"``, ``"pca"``, …).
    n
        Number of generated images.
    memory_budget
        Bytes of activations kept in memory (``""``: the default, a quarter of the RAM).
    threads
        ``torch.set_num_threads`` (None: torch's default).
    model
        A name :func:`conceptlens.io.models.load` takes (timm models get random weights).
    forward
        Also time the bare forward pass (the peer of ``ratio``); False: ``forward_s`` and ``ratio`` null.

    Returns
    -------
    dict
        One row: :data:`COLUMNS` and ``total_s``, ``forward_passes_per_image``, ``memory_budget``,
        ``loadavg``, ``threads``, ``layer``.
    """
    import resource

    import torch

    from conceptlens.explainer import ConceptExplainer
    from conceptlens.io import models
    from conceptlens.split.model_split import ModelSplit

    if threads:
        torch.set_num_threads(threads)
    load = [round(v, 2) for v in os.getloadavg()]
    net = models.load(model)
    size = int(net.preset.size)
    split = ModelSplit(net, "auto", progress=False)
    with torch.no_grad():
        net(next(iter(_images(1, size))))  # warm-up: first-call allocations are no one's cost
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in _images(n, size) if forward else ():
            net(x)
    fwd = time.perf_counter() - t0 if forward else None
    fwd_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ex = ConceptExplainer(split, method, 10, seed=0, method_params=PARAMS.get(method, {}), progress=False)
    t0 = time.perf_counter()
    ex.fit(_images(n, size), batch_size=32, memory_budget=memory_budget or None)
    total = time.perf_counter() - t0
    s = ex.stream_
    passes = 1.0
    if ex.crops_ is not None:
        passes += len(ex.crops_) / n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model, "layer": str(split.layer), "method": method, "n_images": n,
            "on_disk": s["on_disk"], "forward_s": None if fwd is None else round(fwd, 2),
            "extract_s": s["extract"], "crops_s": s["crops"], "fit_s": s["fit"], "encode_s": s["encode"],
            "total_s": round(total, 2), "ratio": None if fwd is None else round(total / fwd, 2),
            "ratio_per_pass": None if fwd is None else round(total / fwd / passes, 2),
            "forward_passes_per_image": round(passes, 2),
            "peak_rss_mb": round(peak / 1024), "base_rss_mb": round(base / 1024),
            "forward_peak_rss_mb": round(fwd_peak / 1024),
            "memory_budget": memory_budget or "default (RAM/4)", "loadavg": load,
            "threads": torch.get_num_threads()}


def _child(model: str, method: str, n: int, budget: str, threads: int | None) -> dict[str, Any]:
    forward = n <= FORWARD_MAX_N
    code = ("import json, sys; from conceptlens.bench.scale import measure; print('RESULT ' + json.dumps("
            f"measure({method!r}, {n}, {budget!r}, {threads!r}, {model!r}, {forward!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"bench scale: {model} {method} at N={n} failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


def parse_rows(spec: str) -> tuple[tuple[str, str, int], ...]:
    """Rows to measure from ``"nmf:100,1000; timm:resnet18/nmf:1000"`` (model defaults to EfficientNet-Lite0).

    Raises
    ------
    ParameterError
        An item that is not ``[model/]method:N[,N…]`` with positive integers.
    """
    rows: list[tuple[str, str, int]] = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        head, _, sizes = item.rpartition(":")
        model, _, method = head.rpartition("/")
        try:
            ns = [int(v) for v in sizes.split(",")]
        except ValueError:
            ns = []
        if not method or not ns or min(ns) < 1:
            raise ParameterError(f"bench scale rows: {item!r} is not '[model/]method:N[,N…]'; e.g. "
                                 "'nmf:100,1000;timm:resnet18/nmf:1000'")
        rows += [(model or DEFAULT_MODEL, method, n) for n in ns]
    return tuple(rows)


def run_rows(what: str, rows: str, *, quick: bool = False, out: Path | str = Path("bench/results")) -> Any:
    """``conceptlens bench <what> --rows …``: :func:`run_benchmark` on those rows (``what`` must be scale)."""
    if what != "scale":
        raise ParameterError(f"--rows is for bench scale, not bench {what}: drop it")
    return run_benchmark(quick=quick, out=out, rows=rows)


def _key(r: dict[str, Any]) -> tuple[str, str, int]:
    return (str(r.get("model", DEFAULT_MODEL)), str(r["method"]), int(r["n_images"]))


def run_benchmark(quick: bool = False, out: Path | str = Path("bench/results"), *,
                  rows: tuple[tuple[str, str, int], ...] | str | None = None,
                  sizes: tuple[int, ...] | None = None,
                  methods: tuple[str, ...] = METHODS, memory_budget: str = "64MB",
                  threads: int | None = THREADS) -> dict[str, Any]:
    """Measure rows in fresh processes, print them, merge them into ``out/scale.json``, write ``scale.md``.

    Parameters
    ----------
    quick
        Small sizes (16 and 48 images) of ``methods`` on EfficientNet-Lite0, a 1 MB budget.
    out
        Folder of ``scale.json`` and ``scale.md``; rows already there for other (model, method, N) stay.
    rows
        ``(model, method, N)`` triples or a :func:`parse_rows` spec (default: :data:`PLAN`; FACE at
        10,000 only when FACE fits out of core).
    sizes, methods
        Instead of ``rows``: every method at every size, EfficientNet-Lite0.
    memory_budget, threads
        Passed to :func:`measure`.
    """
    if isinstance(rows, str):
        rows = parse_rows(rows)
    if rows is None:
        if quick or sizes is not None:
            rows = tuple((DEFAULT_MODEL, m, n) for m in methods for n in (sizes or (16, 48)))
        else:
            rows = tuple(r for r in PLAN if not (r[1] == "face" and r[2] > 1000 and not _out_of_core("face")))
    path = Path(out) / "scale.json"
    old = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    measured: dict[tuple[str, str, int], dict[str, Any]] = {_key(r): r for r in old}
    payload = {"layer": "auto", "n_concepts": 10, "images": "generated, at the model's input size",
               "params": PARAMS, "rows": []}
    for model, m, n in rows:
        if m == "craft" and not quick and n > CRAFT_MAX_N:
            continue
        budget = "1MB" if quick else memory_budget
        if not _out_of_core(m):
            budget = ""  # no out-of-core fit (it would refuse above the budget): the default budget
        r = _child(model, m, n, budget, threads)
        measured[_key(r)] = r
        print("  ".join(f"{c}={r[c]}" for c in COLUMNS), flush=True)
        payload["rows"] = sorted(measured.values(), key=lambda v: (_plan_rank(_key(v)), _key(v)))
        write_json(out, "scale", payload)  # after every row: a long run keeps what it measured
        write_table(out)
    print(f"wrote {path}")
    return payload


def _plan_rank(key: tuple[str, str, int]) -> int:
    return PLAN.index(key) if key in PLAN else len(PLAN)
