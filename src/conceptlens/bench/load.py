"""How the demo and the NMF engine hold up on a busy machine: each alone, then beside busy processes.

``conceptlens bench load`` runs the demo (per-stage wall times, :class:`~conceptlens.workflows.demo.
DemoResult`) and the default NMF fit against scikit-learn's cd solver once on the machine as it is, then
again beside ``busy`` CPU-bound processes that it starts itself (each a 2-thread numpy matrix product loop,
the competitor the issue names) and stops afterwards, whatever happens. It writes ``load.json``: the
seconds alone and beside the load per stage, their ratio (1 = unaffected; fair sharing of 2 cores with
one 2-thread competitor costs 2×), the NMF speed-up over scikit-learn in both conditions, and the load
averages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from conceptlens.bench import peer, write_json

__all__ = ["busy_processes", "nmf_vs_cd", "run_benchmark", "BUSY_CODE"]

#: One competing process: a 2-thread numpy product loop that stops by itself after ``argv[1]`` seconds
#: (so that nothing is left behind even if the benchmark is killed).
BUSY_CODE = (
    "import sys, time, numpy as np\n"
    "a = np.random.default_rng(0).random((1500, 1500)); end = time.time() + float(sys.argv[1])\n"
    "while time.time() < end:\n"
    "    a @ a\n"
)


@contextmanager
def busy_processes(n: int, threads: int = 2, max_seconds: float = 1800.0) -> Iterator[list[int]]:
    """Run ``n`` CPU-bound processes of ``threads`` threads each for the block; yields their pids.

    They are terminated (then killed) on exit, and each stops by itself after ``max_seconds``.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_CODE, str(max_seconds)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(1.0 if n else 0.0)  # let them start their loops
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck child
                p.kill()
                p.wait()


def nmf_vs_cd(A: torch.Tensor, k: int = 25) -> dict[str, float]:
    """The default NMF fit and scikit-learn's cd solver (``init="nndsvda"``) on ``A [n, C]``: seconds, error.

    Returns ``{"ours_s", "cd_s", "speedup", "ours_err", "cd_err"}`` (relative Frobenius errors).
    """
    from conceptlens.decompose import NMF

    SkNMF = peer("sklearn.decomposition", "scikit-learn").NMF  # noqa: N806 - scikit-learn's class
    X = A.reshape(-1, A.shape[-1]).float()
    t = time.perf_counter()
    ours = NMF(k, seed=0).fit(X)
    ours_s = time.perf_counter() - t
    Xn = X.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        sk = SkNMF(n_components=k, init="nndsvda", solver="cd", random_state=0)
        U = sk.fit_transform(Xn)
        cd_s = time.perf_counter() - t
    norm = float(torch.linalg.norm(X))
    cd_err = float(torch.linalg.norm(X - torch.from_numpy(U @ sk.components_).float())) / norm
    return {"ours_s": round(ours_s, 3), "cd_s": round(cd_s, 3), "speedup": round(cd_s / ours_s, 2),
            "ours_err": round(float(ours.reconstruction_err_), 5), "cd_err": round(cd_err, 5)}


def _loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return []


def _one_condition(quick: bool) -> dict[str, Any]:
    from conceptlens.bench.nmf import real_activations
    from conceptlens.workflows.demo import run_demo

    opts: dict[str, Any] = (dict(methods="ice,kmeans", patch=224, kl_weights="")
                            if quick else {})
    load_before = _loadavg()
    with tempfile.TemporaryDirectory() as d:
        demo = run_demo(Path(d) / "report", echo=lambda _s: None, **opts)
    nmf = nmf_vs_cd(real_activations(quick), k=10 if quick else 25)
    return {"demo_s": round(demo.seconds, 2), "stages": {k: round(v, 3) for k, v in demo.stages.items()},
            "nmf": nmf, "loadavg_before": load_before, "loadavg_after": _loadavg()}


def run_benchmark(
    quick: bool = False, out: Path | str = Path("bench/results"), busy: int = 1
) -> dict[str, Any]:
    """Measure, print and write ``out/load.json``; returns the payload.

    Parameters
    ----------
    quick
        Two methods on the whole photos (seconds, for the tests) instead of the full demo.
    out
        Folder of the JSON.
    busy
        Competing 2-thread CPU-bound processes in the loaded condition.
    """
    alone = _one_condition(quick)
    with busy_processes(busy):
        loaded = _one_condition(quick)
    stages = {k: {"alone_s": v, "loaded_s": loaded["stages"].get(k),
                  "ratio": round(loaded["stages"][k] / v, 2) if v > 0 and k in loaded["stages"] else None}
              for k, v in alone["stages"].items()}
    ratio = round(loaded["demo_s"] / alone["demo_s"], 2)
    nmf_loaded = loaded["nmf"]["speedup"]
    masks_ratio = stages.get("fit masks", {}).get("ratio")
    headline = [
        {"what": f"demo beside {busy} busy 2-thread process(es) / alone", "value": f"{ratio:.2f}×",
         "target": "≤ 2.5×", "met": ratio <= 2.5},
        {"what": "NMF default fit, scikit-learn cd / ours, both beside the load",
         "value": f"{nmf_loaded:.1f}×", "target": "≥ 5×", "met": nmf_loaded >= 5.0},
    ]
    if masks_ratio is not None:
        headline.append({"what": "masks beside the load / alone", "value": f"{masks_ratio:.2f}×",
                         "target": "≤ 3×", "met": masks_ratio <= 3.0})
    headline.append({"what": "demo alone, after set-up (the run above; 2 cores)",
                     "value": f"{alone['demo_s']:.1f} s", "target": "≤ 60 s", "met": alone["demo_s"] <= 60.0})
    payload = {"headline": headline, "busy_processes": busy, "busy_threads": 2,
               "threads": torch.get_num_threads(),
               "demo": {"alone_s": alone["demo_s"], "loaded_s": loaded["demo_s"], "ratio": ratio,
                        "target_ratio": 2.5},
               "stages": stages,
               "nmf": {"alone": alone["nmf"], "loaded": loaded["nmf"], "target_loaded_speedup": 5.0},
               "loadavg": {"alone": alone["loadavg_before"], "loaded": loaded["loadavg_after"]}}
    print(f"demo alone {alone['demo_s']:.1f} s, beside {busy} busy 2-thread process(es) "
          f"{loaded['demo_s']:.1f} s: {ratio:.2f}× (target ≤ 2.5×)")
    w = max(len(k) for k in stages)
    for k, v in stages.items():
        after = float("nan") if v["loaded_s"] is None else v["loaded_s"]
        print(f"  {k:<{w}}  {v['alone_s']:7.2f} s → {after:7.2f} s  {v['ratio']}×")
    a, b = alone["nmf"], loaded["nmf"]
    print(f"NMF default fit vs scikit-learn cd: {a['speedup']}× alone, {b['speedup']}× loaded (target ≥ 5×)")
    print(f"wrote {write_json(out, 'load', payload)}")
    return payload
