"""Sobol designs and estimator pieces: the scrambled design, lazy evaluation blocks, Jansen, the bootstrap.

Notation as in :mod:`conceptlens.importance.sobol`: ``d`` inputs, ``n`` design rows, ``A, B [n, d]`` the
two design matrices, ``C_i`` = ``A`` with column ``i`` from ``B``, ``f: [m, d] -> [m]``. The stacked
evaluation ``[A; (B;) C_1; …; C_d]`` is built batch by batch, so memory is bounded by the batch whatever
``d`` and ``n`` are; every sum of the estimators is formed in float64.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from scipy.stats import qmc

from conceptlens._check import check_int
from conceptlens.errors import ParameterError

__all__ = ["sobol_design", "evaluate_blocks", "jansen", "bootstrap_interval", "check_batch", "check_outputs",
           "machine_eps"]

MAX_SOBOL_DIM = 21201  # scipy's direction numbers (Joe & Kuo) cover this many dimensions


def check_batch(batch_size: int | None) -> int | None:
    """``batch_size`` checked (an integer ≥ 1, or None for one call)."""
    if batch_size is None:
        return None
    return check_int("batch_size", batch_size, 1, hint="pass a positive number of points per call, or None")


def sobol_design(dim: int, n_designs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two design matrices ``A, B`` from one scrambled Sobol sequence in ``2·dim`` dimensions.

    Parameters
    ----------
    dim
        Number of inputs ``d`` (≥ 1).
    n_designs
        Rows ``n`` per matrix (≥ 2). Powers of two keep the Sobol balance properties
        (``random_base2``); other values take the first ``n`` points (``random``).
    seed
        Seed of the scrambling; same seed, same design.

    Returns
    -------
    A, B : torch.Tensor
        ``[n, d]`` float64 on the CPU, points of ``[0, 1)^d``.
    """
    dim = check_int("dim", dim, 1, hint="the function needs at least one input")
    n = check_int("n_designs", n_designs, 2, hint="the estimator needs a variance, use e.g. 32 or 2**10")
    if 2 * dim > MAX_SOBOL_DIM:
        raise ParameterError(
            f"dim={dim} is too large for a Sobol design in 2·dim dimensions (at most {MAX_SOBOL_DIM // 2}); "
            "reduce the number of inputs (concepts)"
        )
    seed = operator.index(seed)
    rng = np.random.default_rng(seed)
    # scipy >= 1.15 names the generator `rng`; older versions call it `seed` and treat a Generator alike,
    # so passing a Generator gives the same points on both.
    try:
        sampler = qmc.Sobol(d=2 * dim, scramble=True, rng=rng)
    except TypeError:  # pragma: no cover - scipy < 1.15
        sampler = qmc.Sobol(d=2 * dim, scramble=True, seed=rng)
    if n & (n - 1) == 0:
        pts = sampler.random_base2(int(math.log2(n)))
    else:
        with warnings.catch_warnings():  # documented above: balance is lost, the estimator stays valid
            warnings.filterwarnings("ignore", message=".*balance properties.*")
            pts = sampler.random(n)
    X = torch.from_numpy(np.ascontiguousarray(pts))
    return X[:, :dim].contiguous(), X[:, dim:].contiguous()


def jansen(fA: torch.Tensor, fC: torch.Tensor, eps: float) -> torch.Tensor:
    """Jansen total indices from ``fA [..., n]`` and ``fC [..., d, n]`` (float64) → ``[..., d]``.

    Outputs whose variance is at the level of rounding noise (``eps`` is the machine epsilon of the
    dtype ``f`` returned) give indices 0: no input changes them.
    """
    var = fA.var(dim=-1, correction=1)
    num = (fA.unsqueeze(-2) - fC).square().mean(-1) / 2
    scale = fA.abs().amax(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    flat = var <= (64 * eps * scale).square()
    st = num / torch.where(flat, torch.ones_like(var), var).unsqueeze(-1)
    return torch.where(flat.unsqueeze(-1), torch.zeros_like(st), st)


def check_outputs(y: torch.Tensor, name: str) -> None:
    """Raise ParameterError naming ``name`` when the outputs ``y`` hold NaN or Inf."""
    if not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise ParameterError(
            f"{name} returned NaN/Inf for {bad} of {y.numel()} design points, so the indices are "
            f"undefined; check {name} on inputs inside its domain"
        )


def machine_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the dtype ``f`` returned (float64's for integer outputs)."""
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float64).eps)


def evaluate_blocks(
    f: Callable[[torch.Tensor], torch.Tensor],
    A: torch.Tensor,
    B: torch.Tensor,
    with_b: bool,
    batch_size: int | None,
    device: torch.device | str | None,
) -> tuple[torch.Tensor, float]:
    """``f`` on the stacked ``[A; (B;) C_1; …; C_d]``, built lazily per batch → ``[blocks, n]`` float64.

    Row ``r`` of the stack is block ``r // n``, design ``r % n``; only the points of one batch exist at a
    time, so memory is bounded by ``batch_size`` whatever ``d`` and ``n`` are.
    """
    n, d = A.shape
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dtype = torch.float32
    A_ = A.to(dev, dtype)
    B_ = B.to(dev, dtype)
    first = 2 if with_b else 1  # index of block C_1
    n_blocks = first + d
    total = n * n_blocks
    step = total if batch_size is None else batch_size
    out: torch.Tensor | None = None
    out_dtype = torch.float32
    with torch.no_grad():
        for start in range(0, total, step):
            rows = torch.arange(start, min(start + step, total), device=dev)
            block, j = rows // n, rows % n
            pts = A_[j]
            if with_b:
                is_b = block == 1
                pts = torch.where(is_b.unsqueeze(1), B_[j], pts)
            col = block - first
            is_c = col >= 0
            if bool(is_c.any()):
                r, cc = rows[is_c] - start, col[is_c]
                pts[r, cc] = B_[j[is_c], cc]
            y = f(pts)
            if not isinstance(y, torch.Tensor):
                raise ParameterError(f"f must return a torch.Tensor, got {type(y).__name__}")
            if y.numel() != rows.numel():
                raise ParameterError(
                    f"f must map points [m, {d}] to outputs [m]; for m={rows.numel()} it returned shape "
                    f"{list(y.shape)}"
                )
            if out is None:
                out_dtype = y.dtype
                out = torch.empty(total, dtype=y.dtype, device=y.device)
            out[start : start + rows.numel()] = y.reshape(-1)
    res = cast(torch.Tensor, out).to("cpu", torch.float64).reshape(n_blocks, n)
    check_outputs(res, "f")
    return res, machine_eps(out_dtype)


def bootstrap_interval(
    per_image: torch.Tensor, n_boot: int, seed: int, level: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile-bootstrap interval of the mean over images of ``per_image [N, k]`` → ``[k], [k]``.

    A resample is a vector of counts (how often each image is drawn), so a batch of resampled means is one
    matrix product ``counts [b, N] @ per_image [N, k] / N``; batches keep ``counts`` under ~32 MB.
    """
    N, k = per_image.shape
    if n_boot == 0:
        nan = torch.full((k,), float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(n_boot, k, dtype=torch.float64)
    step = max(1, (1 << 22) // N)
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        draw = torch.randint(N, (b, N), generator=gen)
        counts = torch.zeros(b, N, dtype=torch.float64).scatter_add_(
            1, draw, torch.ones(b, N, dtype=torch.float64)
        )
        means[s : s + b] = counts @ per_image / N
    alpha = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=0)
    return q[0], q[1]
