"""``conceptlens bench eddp``: EDDP on planted direction pairs, from the paper's easy setting to harder ones.

Every cell of a grid over the knobs of :func:`conceptlens.world.planted.planted_pairs` (correlation ``ρ``
between signal vectors, distractor variance ratio ``r``, per-concept on-rate ``p``) is drawn with a few
seeds, and each method's detectors are scored by decoding IoU (Hungarian-matched, mean over the planted
concepts) and encoding cosine (matched estimated vs planted signal vectors):

``eddp`` / ``eddp_legacy``
    :class:`~conceptlens.decompose.eddp.EDDP` with ``losses="paper"`` (the default) and ``"legacy"``.
``eddp_literal``
    ``losses="paper_literal"``: the review's reading of the paper taken literally (see the EDDP docstring).
``eddp_full_whitening``
    ``losses="paper"`` with ``whiten=0``: the learning space fully whitened (the default shrinks it).
``oracle``
    The planted decoding filters ``W* = [S; D]⁺`` with their exact thresholds (IoU 1 by construction);
    its cosine is that of the pattern estimator ``cov[x, a_i] / var(a_i)`` over the oracle's positives:
    the ceiling of the signal estimator itself.
``signal_filter``
    The raw planted signal vectors used as filters, each with the threshold that maximises its IoU
    (a naive filter: shows how much correlation and distractors hide a concept along its own signal).
``spherical_kmeans``
    Spherical k-means on the centred, unit-normalised rows (best of 3); decoding = cluster membership,
    encoding = the mean centred row of each cluster.
``always_on``
    Every detector claims every row: IoU = the on-rate. A method at or below it has found nothing.

Beyond the grid, one wider cell: 5 concepts, 5 distractors, ``ρ = 0.5``, one concept per row.

Thread count pinned to 1 so the numbers are reproducible; the load average is recorded with them. Writes
``eddp.json`` and ``eddp.md`` to ``bench/results/``.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from conceptlens._io import atomic_write
from conceptlens.bench import write_json
from conceptlens.decompose._eddp_losses import spherical_kmeans
from conceptlens.decompose.eddp import EDDP
from conceptlens.world.planted import PlantedPairs, decoding_iou, encoding_cosine, planted_pairs

__all__ = ["run_benchmark", "score_methods", "GRID"]

#: The full grid: (correlation, distractor_ratio, on_rate); None = the paper's setting for that knob.
GRID: dict[str, tuple[Any, ...]] = {
    "correlation": (None, 0.8),
    "distractor_ratio": (None, 4.0),
    "on_rate": (None, 0.5, 0.3),
}
METHODS = ("eddp", "eddp_legacy", "eddp_literal", "eddp_full_whitening", "oracle", "signal_filter",
           "spherical_kmeans", "always_on")
#: Extra cells beyond the grid: (label, planted_pairs arguments).
WIDE = {"n_concepts": 5, "n_distractors": 5, "correlation": 0.5}


def _pattern(X: torch.Tensor, Y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``cov[x, a_i] / var(a_i)`` over the rows with ``Y[:, i]``: ``[k, C]``."""
    out = []
    for i in range(a.shape[1]):
        m = Y[:, i]
        if int(m.sum()) < 2:
            out.append(torch.zeros(X.shape[1], dtype=X.dtype))
            continue
        xc = X[m] - X[m].mean(0)
        ac = a[m, i] - a[m, i].mean()
        out.append(ac @ xc / ac.square().sum().clamp_min(1e-12))
    return torch.stack(out)


def _best_threshold_iou(proj: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Claims ``proj > θ`` with the ``θ`` that maximises the IoU with ``truth`` (both ``[n]``)."""
    order = torch.argsort(proj, descending=True)
    hit = truth[order].to(torch.float64).cumsum(0)  # true positives when the top j+1 rows are claimed
    claimed = torch.arange(1, proj.numel() + 1, dtype=torch.float64)
    iou = hit / (claimed + truth.sum() - hit)
    j = int(iou.argmax())
    Y = torch.zeros_like(truth)
    Y[order[: j + 1]] = True
    return Y


def score_methods(
    data: PlantedPairs, k: int, seed: int, eddp_params: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Decoding IoU and encoding cosine of every method on one planted data set.

    Parameters
    ----------
    data : PlantedPairs
    k : int
        Detectors to fit (the planted number of concepts).
    seed : int
        Seed of the fits.
    eddp_params : dict
        Extra :class:`EDDP` arguments (e.g. a shorter ``max_iter``).

    Returns
    -------
    dict
        Method → ``{"iou": …, "cosine": …, "seconds": …}`` (``cosine`` None for ``signal_filter``).
    """
    X, P = data.X, data.present
    out: dict[str, dict[str, float]] = {}
    variants = (("eddp", {}), ("eddp_legacy", {"losses": "legacy"}),
                ("eddp_literal", {"losses": "paper_literal"}), ("eddp_full_whitening", {"whiten": 0.0}))
    for name, kw in variants:
        t0 = time.perf_counter()
        d = EDDP(n_concepts=k, seed=seed, **kw, **eddp_params).fit(X)
        Y = d.encode(X) > 0.5
        cos = encoding_cosine(Y, P, d.encoding_directions_, data.signals)
        out[name] = {"iou": decoding_iou(Y, P), "cosine": cos, "seconds": time.perf_counter() - t0}
    a = X @ data.filters.T - data.biases
    Y = a > 0
    cos = encoding_cosine(Y, P, _pattern(X, Y, a), data.signals)
    out["oracle"] = {"iou": decoding_iou(Y, P), "cosine": cos}
    proj = X @ data.signals.T
    Ys = torch.stack([_best_threshold_iou(proj[:, i], P[:, i]) for i in range(k)], 1)
    out["signal_filter"] = {"iou": decoding_iou(Ys, P), "cosine": None}  # type: ignore[dict-item]
    Xc = X - X.mean(0)
    gen = torch.Generator().manual_seed(seed)
    Zn = F.normalize(Xc, dim=1)
    best = max((spherical_kmeans(Zn, k, gen) for _ in range(3)),
               key=lambda cl: float((Zn @ cl[0].T).max(1).values.sum()))
    Yk = F.one_hot(best[1], k).bool()
    cent = (Yk.T.to(X.dtype) @ Xc) / Yk.sum(0).clamp_min(1)[:, None]
    cos = encoding_cosine(Yk, P, cent, data.signals)
    out["spherical_kmeans"] = {"iou": decoding_iou(Yk, P), "cosine": cos}
    out["always_on"] = {"iou": decoding_iou(torch.ones_like(P), P), "cosine": None}  # type: ignore[dict-item]
    return out


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| k / d | ρ | r | on-rate | " + " | ".join(f"{m} IoU / cos" for m in METHODS) + " |\n"
            "|" + "---|" * (4 + len(METHODS)))
    lines = [head]
    for r in rows:
        cells = [f"{r.get('n_concepts', 3)} / {r.get('n_distractors', 2)}",
                 _fmt(r["correlation"]) if r["correlation"] is not None else "paper",
                 _fmt(r["distractor_ratio"]) if r["distractor_ratio"] is not None else "paper",
                 _fmt(r["on_rate"]) if r["on_rate"] is not None else "one-hot"]
        cells += [f"{_fmt(r[m]['iou'])} / {_fmt(r[m]['cosine'])}" for m in METHODS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_benchmark(
    quick: bool = False, out: str | os.PathLike[str] = Path("bench/results"), verbose: bool = True
) -> dict[str, Any]:
    """The grid of planted settings × methods; writes ``eddp.json`` and ``eddp.md``.

    Full: the :data:`GRID` (12 settings) and the wide cell, 6000 rows, 3 concepts, 2 distractors (wide:
    5 and 5), 16 dimensions, seeds 0 and 1, EDDP's default budget (1000 steps). ``quick``: the paper's
    setting and one hard one, one seed, 1500 rows, 150 steps.

    Returns
    -------
    dict
        The JSON payload: ``settings`` and one row per grid cell with each method's mean IoU and cosine
        over the seeds, plus the per-seed values.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if quick:
            cells = [dict(zip(GRID, c, strict=True)) for c in ((None, None, None), (0.5, 4.0, 0.5))]
            seeds, n, params = (0,), 1500, {"max_iter": 150, "polish_iter": 50, "n_init": 1}
        else:
            cells = [dict(zip(GRID, c, strict=True)) for c in itertools.product(*GRID.values())]
            cells.append({"distractor_ratio": None, "on_rate": None, **WIDE})
            seeds, n, params = (0, 1), 6000, {}
        rows: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for cell in cells:
            per_seed = []
            k = int(cell.get("n_concepts", 3))
            for s in seeds:
                data = planted_pairs(n, seed=s, **cell)
                per_seed.append(score_methods(data, k, s, params))
            row: dict[str, Any] = {"n_concepts": k, "n_distractors": cell.get("n_distractors", 2), **cell}
            for m in METHODS:
                vals = [p[m] for p in per_seed]
                cos = [v["cosine"] for v in vals]
                row[m] = {"iou": sum(v["iou"] for v in vals) / len(vals),
                          "cosine": None if cos[0] is None else sum(cos) / len(cos),
                          "per_seed_iou": [v["iou"] for v in vals]}
            rows.append(row)
            if verbose:
                print(_markdown([row]).splitlines()[-1], flush=True)
    finally:
        torch.set_num_threads(threads)
    payload = {"quick": quick, "seconds": time.perf_counter() - t0,
               "settings": {"n": n, "dim": 16, "seeds": list(seeds), "wide_cell": WIDE,
                            "eddp_params": params, "threads": 1},
               "rows": rows}
    write_json(out, "eddp", payload)
    md = ("# EDDP on planted direction pairs\n\nDecoding IoU / encoding cosine, mean over seeds "
          f"{list(seeds)} (`conceptlens bench eddp`; ρ: signal correlation, r: distractor variance "
          "ratio).\n\n"
          + _markdown(rows))
    atomic_write(out / "eddp.md", md)
    if verbose:
        print(md)
    return payload
