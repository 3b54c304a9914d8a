"""CRAFT's Sobol importance against the bare head evaluations it needs (issue: ≤ 20 % over bare ``h``).

Data: EfficientNet-Lite0 cut at ``layer="auto"``, the demo's 112-px crops of the sample photos (the 13
whole photos with ``quick``), an NMF bank of ``k = 10`` concepts, target = the class of 'chelsea'.

The estimator needs ``N · n_designs · (k + 1)`` rows of ``h``; the peer is ``h`` called on that many rows in
the same batch shapes, on activations made once before the clock starts. So ``overhead = sobol / bare − 1``
is what building the masked activations and the bookkeeping cost on top of the model's own work. Both are
timed interleaved, ``rounds`` times each; medians are reported, with the machine's load.

A third timing is the floor of any estimator that hands ``h`` materialised activations: writing them, i.e.
``fill_`` of an activation buffer of each call's size (:func:`write_floor_seconds`). On Lite0's layer
``"auto"`` the head is a global average pool and one linear layer, so cheap that this write alone is about
a quarter of it: the estimator's own product ``(U ⊙ M) @ W`` cannot cost less than that write.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from conceptlens.bench import write_json
from conceptlens.bench.fidelity import demo_activations
from conceptlens.decompose.nmf import NMF
from conceptlens.importance.sobol import call_plan, chunk_budget, concept_total_indices, sobol_design

__all__ = ["bare_head_seconds", "call_sizes", "run_benchmark", "write_floor_seconds"]


def call_sizes(N: int, n: int, k: int, plan: tuple[int, int, int]) -> list[int]:
    """Rows of each ``h`` call :func:`~conceptlens.importance.sobol.concept_total_indices` makes, in order.

    ``N`` images, ``n`` design rows, ``k`` concepts, ``plan = (nb, jb, kb)`` from
    :func:`~conceptlens.importance.sobol.call_plan`. Their sum is ``N · n · (k + 1)``.
    """
    nb, jb, kb = plan
    sizes = []
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        for j0 in range(0, n, jb):
            q = min(jb, n - j0)
            sizes.append(m * q)
            sizes.extend(min(kb, k - b0) * m * q for b0 in range(0, k, kb))
    return sizes


def bare_head_seconds(h: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor, sizes: list[int]) -> float:
    """Seconds to call ``h`` once per entry of ``sizes`` on that many activation rows (no autograd).

    ``A [N, ..., C]`` supplies the rows (repeated when a call needs more than ``N``); one batch is built
    before the clock starts and sliced, so only ``h`` is timed.
    """
    reps = math.ceil(max(sizes) / A.shape[0])
    batch = A.repeat(reps, *([1] * (A.ndim - 1)))[: max(sizes)].contiguous()
    with torch.no_grad():
        t0 = time.perf_counter()
        for r in sizes:
            h(batch[:r])
        return time.perf_counter() - t0


def write_floor_seconds(row_shape: tuple[int, ...], sizes: list[int]) -> float:
    """Seconds to overwrite (``fill_``) an activation buffer of ``r`` rows of ``row_shape``, once per ``r``.

    The buffer is allocated (and touched) before the clock starts and sliced per call, as the estimator's.
    """
    buf = torch.zeros(max(sizes), *row_shape)
    t0 = time.perf_counter()
    for r in sizes:
        buf[:r].fill_(1.0)
    return time.perf_counter() - t0


def run_benchmark(quick: bool = False, out: Path | str = Path("bench/results")) -> dict[str, Any]:
    """Measure, print and write ``out/sobol.json``; returns the payload."""
    split, x, A, target = demo_activations(quick)
    k, n_designs, rounds = 10, 32, 3 if quick else 5
    nmf = NMF(k, seed=0)
    U = nmf.fit_encode(A)
    W = nmf.components_
    N, S, C = A.shape[0], math.prod(A.shape[1:-1]), A.shape[-1]
    n = sobol_design(k, n_designs, 0)[0].shape[0]
    plan = call_plan(N, n, k, S * C * A.element_size(), 4096, chunk_budget("auto", A.device))
    sizes = call_sizes(N, n, k, plan)
    n_rows = sum(sizes)
    # the pooled path (the head reads the layer through its mean: split.pools_first()) calls h on one
    # position per row, so its peer is h on that many one-position rows
    pools = split.pools_first()
    A1 = A.mean((1, 2), keepdim=True)
    plan1 = call_plan(N, n, k, C * A.element_size(), 4096, chunk_budget("auto", A.device))
    sizes1 = call_sizes(N, n, k, plan1)
    t: dict[str, list[float]] = {key: [] for key in ("sobol", "bare", "floor", "pooled", "bare_pooled")}
    for _ in range(rounds):  # interleaved, so a change of load hits all of them
        t0 = time.perf_counter()
        res = concept_total_indices(U, W, split.h, target, n_designs=n_designs, n_boot=0, progress=False)
        t["sobol"].append(time.perf_counter() - t0)
        t["bare"].append(bare_head_seconds(split.h, A, sizes))
        t["floor"].append(write_floor_seconds(tuple(A.shape[1:]), sizes))
        t0 = time.perf_counter()
        res1 = concept_total_indices(U, W, split.h, target, n_designs=n_designs, n_boot=0, progress=False,
                                     pooled=True)
        t["pooled"].append(time.perf_counter() - t0)
        t["bare_pooled"].append(bare_head_seconds(split.h, A1, sizes1))
    med = {key: statistics.median(v) for key, v in t.items()}
    s_med, b_med, f_med = med["sobol"], med["bare"], med["floor"]
    ov1 = med["pooled"] / med["bare_pooled"] - 1
    row = {"k": k, "n_images": N, "n_designs": n, "h_rows": n_rows, "calls": len(sizes), "plan": list(plan),
           "sobol_s": round(s_med, 4), "bare_h_s": round(b_med, 4), "overhead": round(s_med / b_med - 1, 4),
           "write_floor_s": round(f_med, 4), "write_floor_over_bare": round(f_med / b_med, 4),
           "target_overhead": 0.20, "indices": [round(float(v), 4) for v in res.indices],
           "pools_first": pools, "pooled_s": round(med["pooled"], 4),
           "bare_h_pooled_s": round(med["bare_pooled"], 4), "pooled_overhead": round(ov1, 4),
           "pooled_speedup": round(s_med / med["pooled"], 2),
           "pooled_max_index_diff": float((res1.indices - res.indices).abs().max())}
    print(f"Sobol total indices, k={k}, {N} images × {n} designs × {k + 1} = {n_rows} rows of h "
          f"(layer {split.layer}): {s_med:.2f} s against bare h {b_med:.2f} s "
          f"→ overhead {100 * row['overhead']:.1f} %, medians of {rounds}; writing the "
          f"activations alone: {f_med:.2f} s = {100 * f_med / b_med:.0f} % of bare h")
    print(f"pooled codes (the head pools first: {pools}): {med['pooled']:.3f} s against bare h on one "
          f"position per row {med['bare_pooled']:.3f} s → overhead {100 * ov1:.1f} % (target ≤ 20 %); "
          f"{row['pooled_speedup']:.1f}× faster than the full grid, indices within "
          f"{row['pooled_max_index_diff']:.1e}")
    ov = ov1 if pools else row["overhead"]
    headline = [{"what": f"Sobol importance k={k}: time over the bare h calls it needs "
                         + ("(codes pooled first, as for this head)" if pools else "(full grid)"),
                 "value": f"+{100 * ov:.0f} % (full grid: +{100 * row['overhead']:.0f} %, writing the "
                          f"activations alone +{100 * f_med / b_med:.0f} %)",
                 "target": "≤ +20 %", "met": ov <= 0.20}]
    payload = {"headline": headline, "layer": split.layer, "target": target, "rounds": rounds, "row": row,
               "sobol_all_s": [round(v, 3) for v in t["sobol"]],
               "bare_all_s": [round(v, 3) for v in t["bare"]],
               "write_floor_all_s": [round(v, 4) for v in t["floor"]],
               "pooled_all_s": [round(v, 4) for v in t["pooled"]],
               "bare_pooled_all_s": [round(v, 4) for v in t["bare_pooled"]]}
    print(f"wrote {write_json(out, 'sobol', payload)}")
    return payload
