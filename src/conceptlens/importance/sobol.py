"""Sobol total-order indices: a generic quasi-Monte-Carlo estimator and CRAFT's concept importance.

Notation (fixed for this module):

==========  ==================  ===============================================================
``d``       int                 number of inputs (``dim``); ``k`` when the inputs are concept masks
``n``       int                 number of design rows (``n_designs``)
``A, B``    ``[n, d]``          the two design matrices: columns ``0..d-1`` and ``d..2d-1`` of one
                                scrambled Sobol sequence in ``2d`` dimensions
``C_i``     ``[n, d]``          ``A`` with its column ``i`` taken from ``B``
``f``       ``[m, d] -> [m]``   the model, on points of the unit cube ``[0, 1]^d``
``ST_i``                        total-order index of input ``i``: the share of ``Var f`` that
                                involves input ``i`` (alone or with others)
``U``       ``[N, ..., k]``     concept coefficients (channels last; ``...`` = spatial positions)
``W``       ``[k, C]``          the concept bank; activations are ``A = (U ⊙ M) @ W (+ offset)``
``h``       ``[B, ..., C] -> [B, K]``  the head (activations to logits); ``c`` the target class
``M``       ``[k]``             one mask per concept, the same value at every spatial position
==========  ==================  ===============================================================

Estimator (Jansen 1999, as in Saltelli et al. 2010, table 2, line f):
``ST_i = Σ_j (f(A_j) − f(C_ij))² / (2 n Var f(A))`` with the unbiased sample variance of ``f(A)``.
It needs ``f`` on ``A`` and on every ``C_i``: ``n (d + 1)`` evaluations. ``B`` itself is never evaluated
(only its columns enter the ``C_i``), so total indices cost one block fewer than the ``n (d + 2)`` of a
Saltelli design; :func:`first_order_indices` (Saltelli 2010) does need ``f(B)``.

Designs are scrambled Sobol points (``scipy.stats.qmc.Sobol``): CRAFT's and Xplique's code use an
unscrambled Halton sequence whose first row is all zeros and whose columns are correlated.

For concepts (CRAFT, Fel et al. 2023) ``f(M) = h((U ⊙ M) @ W)[:, c]`` for each image; the indices are
averaged over images, with a bootstrap confidence interval over images. When ``h`` is a global average
pool followed by a linear layer, ``f`` is linear in ``M``, ``f(M) = Σ_i M_i c_i + const`` with
``c_i = mean_hw(U_i) (W_i · w_c)``, and the total index has the exact closed form
``ST_i = c_i² Var(M_i) / Σ_j c_j² Var(M_j)`` (no interactions, so the indices sum to 1):
:func:`concept_total_indices_linear`, the fast path and the test oracle.

All indices are returned as float64 on the CPU (the estimator's sums are formed in float64). The design,
the lazy evaluation of its blocks, the Jansen sums and the bootstrap live in
:mod:`~conceptlens.importance._sobol_designs` (:func:`sobol_design` is re-exported here).
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

from conceptlens._check import check_int
from conceptlens.errors import ActivationError, ParameterError, TargetError
from conceptlens.importance._sobol_designs import (
    bootstrap_interval,
    check_batch,
    check_outputs,
    evaluate_blocks,
    jansen,
    machine_eps,
    sobol_design,
)
from conceptlens.importance.base import Context, Importance, concept_directions, register
from conceptlens.progress import enabled as progress_enabled

__all__ = [
    "call_plan",
    "chunk_budget",
    "SobolResult",
    "sobol_design",
    "total_indices",
    "first_order_indices",
    "linear_total_indices",
    "concept_total_indices",
    "concept_total_indices_linear",
]

MAX_SOBOL_DIM = 21201  # scipy's direction numbers (Joe & Kuo) cover this many dimensions
_UNIFORM_VAR = 1.0 / 12.0
_CPU_CHUNK_BYTES = 2**24  # working set of one h call on the CPU: about half a typical last-level cache
_DEVICE_CHUNK_BYTES = 2**30


@dataclass(frozen=True)
class SobolResult:
    """Total-order Sobol indices of ``k`` concepts for one class, over ``N`` images.

    Attributes
    ----------
    indices : torch.Tensor
        ``[k]`` float64, the mean over images of the per-image total indices.
    per_image : torch.Tensor
        ``[N, k]`` float64, total indices of each image (a row is all zeros when the image's output does
        not vary with the masks).
    ci_low, ci_high : torch.Tensor
        ``[k]`` float64, 95 % percentile-bootstrap interval of ``indices`` (resampling images); NaN when
        ``n_boot == 0``.
    n_evaluations : int
        Number of rows the head ``h`` was evaluated on (``N · n_designs · (k + 1)``; 0 for the closed form).
    """

    indices: torch.Tensor
    per_image: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    n_evaluations: int



def total_indices(
    f: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    n_designs: int = 2**10,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Total-order Sobol indices of ``f`` with inputs uniform on ``[0, 1]^dim`` (Jansen estimator).

    Parameters
    ----------
    f
        Maps points ``[m, dim]`` (float32, on ``device``) to outputs ``[m]`` (or ``[m, 1]``). Inputs on
        another range: rescale inside ``f`` (e.g. ``x = lo + (hi - lo) * u``).
    dim
        Number of inputs ``d`` (≥ 1).
    n_designs
        Rows ``n`` of each design matrix (≥ 2; powers of two are best). ``f`` is evaluated on
        ``n (d + 1)`` points in total: ``A`` and each ``C_i`` (``B`` is not needed for total indices).
    seed
        Seed of the scrambled Sobol design; same seed, bit-identical indices.
    batch_size
        At most this many points per call of ``f`` (memory bound); None = one call.
    device
        Device of the points given to ``f`` (default CPU).

    Returns
    -------
    torch.Tensor
        ``[dim]`` float64 on the CPU. Invariant to affine maps ``a f + b`` (``a ≠ 0``); all zeros when
        ``f`` is constant.

    Examples
    --------
    >>> st = total_indices(lambda u: u[:, 0] + 2 * u[:, 1], dim=2, n_designs=2**12)  # ≈ [0.2, 0.8]
    """
    A, B = sobol_design(dim, n_designs, seed)
    y, eps = evaluate_blocks(f, A, B, False, check_batch(batch_size), device)
    return jansen(y[0], y[1:], eps)


def first_order_indices(
    f: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    n_designs: int = 2**10,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """First-order Sobol indices of ``f`` on ``[0, 1]^dim`` (Saltelli 2010 estimator).

    ``S_i = (1/n) Σ_j f(B_j) (f(C_ij) − f(A_j)) / Var`` with the variance of ``f`` over ``A`` and ``B``
    together; ``n (d + 2)`` evaluations (``A``, ``B`` and each ``C_i``). Same design and arguments as
    :func:`total_indices`.

    Returns
    -------
    torch.Tensor
        ``[dim]`` float64 on the CPU (sampling noise can make small indices slightly negative).
    """
    A, B = sobol_design(dim, n_designs, seed)
    y, eps = evaluate_blocks(f, A, B, True, check_batch(batch_size), device)
    fA, fB, fC = y[0], y[1], y[2:]
    both = torch.cat([fA, fB])
    var = both.var(correction=1)
    if var <= (64 * eps * both.abs().max().clamp_min(torch.finfo(torch.float64).tiny)) ** 2:
        return torch.zeros(fC.shape[0], dtype=torch.float64)
    # centring f(B) leaves the estimator's expectation unchanged and removes its dependence on the mean
    return (fB - fB.mean()).mul(fC - fA).mean(-1) / var


# ---------------------------------------------------------------------------------------------- closed form
def linear_total_indices(coef: torch.Tensor, var: torch.Tensor | float = _UNIFORM_VAR) -> torch.Tensor:
    """Exact total indices of ``y = Σ_i c_i M_i + b`` for independent inputs ``M_i``.

    ``ST_i = c_i² Var(M_i) / Σ_j c_j² Var(M_j)``; with no interactions the indices sum to 1.

    Parameters
    ----------
    coef
        ``[..., k]`` coefficients ``c_i`` (any leading batch shape, e.g. ``[N, k]`` per image).
    var
        Variance of each input, a float or a tensor broadcastable to ``[..., k]``; ``1/12`` for
        ``M ~ U[0, 1]``.

    Returns
    -------
    torch.Tensor
        ``[..., k]`` float64 on ``coef``'s device; a row of zeros where every ``c_i² Var(M_i)`` is 0.
    """
    if not isinstance(coef, torch.Tensor) or coef.ndim < 1:
        raise ParameterError("coef must be a torch.Tensor of shape [..., k] with k >= 1")
    c = coef.detach().to(torch.float64)
    v = torch.as_tensor(var, dtype=torch.float64, device=c.device)
    if bool((v < 0).any()) or not bool(torch.isfinite(v).all()):
        raise ParameterError("var must be finite and non-negative (the variance of each input)")
    part = c.square() * v
    total = part.sum(-1, keepdim=True)
    zero = total == 0
    return torch.where(zero, torch.zeros_like(part), part / torch.where(zero, torch.ones_like(total), total))


# ---------------------------------------------------------------------------------------------- concepts
def _check_concepts(U: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(U, torch.Tensor) or not isinstance(W, torch.Tensor):
        raise ParameterError("U and W must be torch tensors ([N, ..., k] coefficients and a [k, C] bank)")
    if U.ndim < 2 or U.shape[0] < 1 or U.shape[-1] < 1:
        raise ActivationError(
            f"U must be concept coefficients [N, ..., k] with N >= 1 and k >= 1, got shape {list(U.shape)}"
        )
    if W.ndim != 2 or W.shape[0] != U.shape[-1]:
        raise ParameterError(
            f"W must be the concept bank [k, C] with k = U.shape[-1] = {U.shape[-1]}, "
            f"got shape {list(W.shape)}"
        )
    if U.device != W.device:
        raise ParameterError(f"U is on {U.device} but W on {W.device}; move both to the same device")
    dtype = torch.promote_types(U.dtype, W.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    U, W = U.detach().to(dtype), W.detach().to(dtype)
    if not bool(torch.isfinite(U).all()) or not bool(torch.isfinite(W).all()):
        raise ActivationError("U or W contain NaN/Inf values; check the decomposition's fit and encode")
    return U, W


def chunk_budget(chunk_bytes: int | str | None, device: torch.device | str = "cpu") -> int | None:
    """The byte cap of one ``h`` call of :func:`concept_total_indices` (``chunk_bytes`` there).

    ``"auto"``: 16 MiB on the CPU (about half a last-level cache), 1 GiB elsewhere; an int as given; None
    for no cap.
    """
    if isinstance(chunk_bytes, str):
        if chunk_bytes != "auto":
            raise ParameterError(f"chunk_bytes must be 'auto', None or a byte count, got {chunk_bytes!r}")
        return _CPU_CHUNK_BYTES if torch.device(device).type == "cpu" else _DEVICE_CHUNK_BYTES
    if chunk_bytes is None:
        return None
    return check_int("chunk_bytes", chunk_bytes, 1, hint="pass a byte budget, 'auto' or None")


def _activations(scaled: torch.Tensor, W: torch.Tensor, offset: torch.Tensor | None,
                 out: torch.Tensor) -> None:
    """``out [R, C] = scaled [R, k] @ W [k, C] (+ offset [C])``, written in place."""
    if offset is None:
        torch.mm(scaled, W, out=out)
    else:
        torch.addmm(offset, scaled, W, out=out)


def call_plan(N: int, n: int, k: int, row_bytes: int, batch_size: int,
              budget: int | None) -> tuple[int, int, int]:
    """How :func:`concept_total_indices` batches its ``h`` calls: ``(nb, jb, kb)``.

    A call covers ``nb`` images × ``jb`` design rows (the ``A`` design, ``nb · jb`` rows), or ``kb`` concepts
    × ``nb`` images × ``jb`` design rows (a ``C_i`` batch). Rows per call are limited by ``batch_size`` and,
    when ``budget`` (bytes) is given, by ``budget // row_bytes`` (the one activation buffer).
    """
    R = batch_size if budget is None else max(1, min(batch_size, budget // row_bytes))
    if n <= R:
        jb, nb = n, min(N, R // n)
    else:
        jb, nb = R, 1
    return nb, jb, max(1, min(k, R // (nb * jb)))


def concept_total_indices(
    U: torch.Tensor,
    W: torch.Tensor,
    h: Callable[[torch.Tensor], torch.Tensor],
    target: int,
    n_designs: int = 32,
    seed: int = 0,
    batch_size: int = 4096,
    n_boot: int = 1000,
    progress: bool | None = None,
    *,
    offset: torch.Tensor | None = None,
    chunk_bytes: int | str | None = "auto",
    pooled: bool = False,
) -> SobolResult:
    """CRAFT's concept importance: Sobol total indices of the concept masks, per image and averaged.

    For each image, ``y(M) = h((U ⊙ M) @ W + offset)[:, target]`` with one mask value ``M_i ∈ [0, 1]`` per
    concept, the same at every spatial position; the Jansen estimator runs on one scrambled Sobol design
    (shared by all images), i.e. ``n_designs · (k + 1)`` rows of ``h`` per image.

    All images and design points are evaluated in batches (rows of ``h`` taken across images and designs),
    under ``torch.inference_mode``. The ``k + 1`` design blocks (``A`` and every ``C_i``) are one mask tensor
    ``[k + 1, n, k]`` made once; a call's scaled codes ``U ⊙ M`` ``[blocks, images, designs, S, k]`` are one
    broadcast multiply into a preallocated buffer, and its activations ``(U ⊙ M) @ W`` one product with the
    bank into a second buffer reused by every call: no Python loop over designs or images, no copy of the
    codes, and the overhead over the bare ``h`` calls is mostly that one write. On EfficientNet-Lite0's
    GAP + linear head (k = 10, 2 cores) the estimator took 1.41× the bare ``h`` calls, and a bare ``fill_``
    of the same activation buffers 0.29× (``conceptlens bench sobol``): with a head that cheap, any
    estimator that hands ``h`` materialised activations pays about that write. (Building ``C_i``'s
    activations from ``A``'s by their rank-one difference ``(B_ji − A_ji) U_i ⊗ W_i`` needs as many writes
    plus a read of ``A``'s activations: measured on EfficientNet-Lite0, k = 10, 1.3–2× slower than the
    product, whose ``k`` multiply-adds per value cost less than that read.)

    Parameters
    ----------
    U
        ``[N, ..., k]`` concept coefficients (``[N, k]`` or channels-last ``[N, h, w, k]``).
    W
        ``[k, C]`` concept bank (rows are the concept directions).
    h
        Head, ``[B, ..., C]`` activations → ``[B, K]`` logits. Called without autograd.
    target
        Class index ``c`` (``0 <= c < K``).
    n_designs
        Rows of each Sobol design matrix (≥ 2; powers of two are best; CRAFT uses 32).
    seed
        Seed of the design and of the bootstrap.
    batch_size
        At most this many activation rows per call of ``h``.
    n_boot
        Bootstrap resamples of the images for the 95 % interval (0 = no interval).
    progress
        Show a progress bar (None: only on an interactive terminal).
    offset
        ``[C]`` constant added to every activation (e.g. PCA's mean); None for NMF-like banks.
    chunk_bytes
        Also cap a call so that its activations and their ``A`` base take at most this many bytes.
        ``"auto"``: 16 MiB on the CPU, which keeps each batch in the last-level cache between being
        written and being read by ``h`` (on a 2-core CPU with 32 MiB of L3, k=10, 7×7×1280 activations:
        about twice as fast as 4096-row calls), 1 GiB on other devices; None = only
        ``batch_size`` limits the calls. Peak extra memory is about ``2 · rows · prod(...) · C`` elements
        for ``rows`` activation rows per call.
    pooled
        ``h`` reads the activations only through their mean over the positions (``h(A) = g(mean_s A)``,
        e.g. ``split.pools_first()``). Since a design's mask is the same at every position,
        ``mean_s((U ⊙ M) @ W) = (mean_s U ⊙ M) @ W``: the estimator then pools the codes first and calls
        ``h`` on one position per row (``[B, 1, 1, C]``), the same numbers up to rounding for ``|S|``
        times fewer activations. False for any other head (the default).

    Returns
    -------
    SobolResult
        ``indices [k]``, ``per_image [N, k]``, ``ci_low [k]``, ``ci_high [k]`` (float64, CPU) and
        ``n_evaluations = N · n_designs · (k + 1)``.
    """
    U, W = _check_concepts(U, W)
    try:
        target = operator.index(target)
    except TypeError:
        raise TargetError(f"target must be a class index (int), got {type(target).__name__}") from None
    if target < 0:
        raise TargetError(f"target must be a class index >= 0, got {target}")
    batch_size = check_int("batch_size", batch_size, 1, hint="pass a positive number of rows per call of h")
    n_boot = check_int("n_boot", n_boot, 0, hint="pass e.g. 1000 resamples, or 0 for no interval")
    budget = chunk_budget(chunk_bytes, U.device)
    N, k, C = U.shape[0], U.shape[-1], W.shape[1]
    spatial = tuple(U.shape[1:-1])
    S = math.prod(spatial)
    A_np, B_np = sobol_design(k, n_designs, seed)
    n = A_np.shape[0]
    dev, dtype = U.device, U.dtype
    A = A_np.to(dev, dtype)
    B = B_np.to(dev, dtype)
    Ur = U.reshape(N, S, k)
    if pooled and S > 1:  # a pool-first head: the mean codes give the same h at one position per row
        Ur, S, spatial = Ur.mean(1, keepdim=True), 1, (1,) * len(spatial)
    if offset is not None:
        offset = torch.as_tensor(offset).to(dev, dtype).reshape(-1)
        if offset.numel() != C:
            raise ParameterError(f"offset must have C = {C} entries, got {offset.numel()}")

    nb, jb, kb = call_plan(N, n, k, S * C * torch.empty((), dtype=dtype).element_size(), batch_size, budget)
    buf = torch.empty(kb * nb * jb * S, C, dtype=dtype, device=dev)
    n_calls = math.ceil(N / nb) * math.ceil(n / jb) * (1 + math.ceil(k / kb))

    y: torch.Tensor | None = None
    out_dtype = torch.float32
    bar = None
    if progress_enabled(progress) and n_calls > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_calls, desc="Sobol", unit="call", leave=False)

    def call(act: torch.Tensor, rows: int) -> torch.Tensor:
        nonlocal y, out_dtype
        logits = h(act.view(rows, *spatial, C))
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != rows:
            got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ParameterError(
                f"h must map activations [B, ..., C] to logits [B, K]; for B={rows} it returned {got}"
            )
        if target >= logits.shape[1]:
            raise TargetError(f"target {target} is out of range for a head with {logits.shape[1]} classes")
        if y is None:
            out_dtype = logits.dtype
            y = torch.empty(k + 1, N, n, dtype=logits.dtype, device=logits.device)
        if bar is not None:
            bar.update(1)
        return logits[:, target]

    # every design block at once, [k + 1, n, k]: block 0 is A, block 1 + i is C_i (A with column i from B)
    masks = A.unsqueeze(0).repeat(k + 1, 1, 1)
    ar = torch.arange(k, device=dev)
    masks[1 + ar, :, ar] = B.t()
    # the A call and then the C_i calls in groups of kb, as block ranges of `masks`
    groups = [(0, 1)] + [(1 + b0, 1 + min(k, b0 + kb)) for b0 in range(0, k, kb)]
    scaled_buf = torch.empty(kb * nb * jb * S * k, dtype=dtype, device=dev)
    try:
        with torch.inference_mode():
            for n0 in range(0, N, nb):
                n1 = min(N, n0 + nb)
                m = n1 - n0
                u = Ur[n0:n1][None, :, None]  # [1, m, 1, S, k]
                for j0 in range(0, n, jb):
                    j1 = min(n, j0 + jb)
                    q = j1 - j0
                    for g0, g1 in groups:
                        r = g1 - g0
                        rows = r * m * q
                        # U ⊙ M for every (block, image, design, position), written into the small buffer
                        scaled = scaled_buf[: rows * S * k].view(r, m, q, S, k)
                        torch.mul(u, masks[g0:g1, None, j0:j1, None, :], out=scaled)
                        act = buf[: rows * S]
                        _activations(scaled.view(rows * S, k), W, offset, act)
                        out = call(act, rows)
                        cast(torch.Tensor, y)[g0:g1, n0:n1, j0:j1] = out.reshape(r, m, q)
    finally:
        if bar is not None:
            bar.close()
    yd = cast(torch.Tensor, y).to("cpu", torch.float64)
    check_outputs(yd, "h")
    per_image = jansen(yd[0], yd[1:].permute(1, 0, 2), machine_eps(out_dtype))  # [N, k]
    lo, hi = bootstrap_interval(per_image, n_boot, seed)
    return SobolResult(
        indices=per_image.mean(0),
        per_image=per_image,
        ci_low=lo,
        ci_high=hi,
        n_evaluations=N * n * (k + 1),
    )


def concept_total_indices_linear(
    U: torch.Tensor,
    W: torch.Tensor,
    weight: torch.Tensor,
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> SobolResult:
    """Exact concept total indices for a global-average-pool + linear head (no sampling, no ``h`` calls).

    With ``h(A) = mean_hw(A) @ Wcls.T + b``, ``y(M) = Σ_i M_i c_i + const`` where
    ``c_i = mean_hw(U_i) (W_i · w_c)``, so ``ST_i = c_i² / Σ_j c_j²`` per image (masks uniform on [0, 1]).
    A constant offset of the activations (PCA's mean) and the bias do not change the indices.

    Parameters
    ----------
    U
        ``[N, ..., k]`` concept coefficients.
    W
        ``[k, C]`` concept bank.
    weight
        ``[C]`` the target class's row ``w_c`` of the linear layer.
    seed
        Seed of the bootstrap.
    n_boot
        Bootstrap resamples of the images (0 = no interval).

    Returns
    -------
    SobolResult
        Same fields as :func:`concept_total_indices`, ``n_evaluations = 0``.
    """
    U, W = _check_concepts(U, W)
    n_boot = check_int("n_boot", n_boot, 0, hint="pass e.g. 1000 resamples, or 0 for no interval")
    if not isinstance(weight, torch.Tensor) or weight.numel() != W.shape[1]:
        raise ParameterError(
            f"weight must be the class's row of the linear head, shape [C] = [{W.shape[1]}]; got "
            f"{list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}"
        )
    w = weight.detach().reshape(-1).to(W.device, torch.float64)
    score = U.reshape(U.shape[0], -1, U.shape[-1]).to(torch.float64).mean(1)  # [N, k]
    per_image = linear_total_indices(score * (W.to(torch.float64) @ w)).cpu()
    lo, hi = bootstrap_interval(per_image, n_boot, seed)
    return SobolResult(
        indices=per_image.mean(0), per_image=per_image, ci_low=lo, ci_high=hi, n_evaluations=0
    )


# ---------------------------------------------------------------------------------------------- registry
@register("sobol")
def sobol_importance(ctx: Context) -> Importance:
    """``importance="sobol"``: total indices of the concept masks (exact for a GAP + linear head).

    Options (``ctx.options``): ``n_designs`` (32), ``batch_size`` (4096), ``n_boot`` (1000), ``exact``
    (``"auto"``: the closed form when the head is GAP + linear; ``False``: always sample).
    ``weights`` are ICE's concept weights (closed form, or autograd for other heads).
    """
    from conceptlens.importance.gradient import gradient_weights
    from conceptlens.importance.linear import linear_weights

    opts = dict(ctx.options or {})
    unknown = set(opts) - {"n_designs", "batch_size", "n_boot", "exact"}
    if unknown:
        raise ParameterError(
            f"unknown option(s) {sorted(unknown)} for importance='sobol'; known: n_designs, batch_size, "
            "n_boot, exact"
        )
    # validated whichever path runs (the closed form does not use n_designs, but a bad value is a mistake)
    check_int("n_designs", opts.get("n_designs", 32), 1, hint="design rows per image, e.g. 32")
    check_int("batch_size", opts.get("batch_size", 4096), 1)
    check_int("n_boot", opts.get("n_boot", 1000), 0)
    D, offset = concept_directions(ctx.decomposition)
    head = ctx.split.linear_head()
    n_boot = opts.get("n_boot", 1000)
    pools_first = getattr(ctx.split, "pools_first", None)  # a split-like object without it: full grid
    if head is not None and opts.get("exact", "auto") in ("auto", True):
        res = concept_total_indices_linear(ctx.U, D, head.weight[ctx.target], seed=ctx.seed, n_boot=n_boot)
    else:
        if opts.get("exact") is True:
            raise ParameterError(
                "exact=True needs a GAP + linear head after the layer; use exact='auto' to sample otherwise"
            )
        res = concept_total_indices(
            ctx.U, D, ctx.split.h, ctx.target, n_designs=opts.get("n_designs", 32), seed=ctx.seed,
            batch_size=opts.get("batch_size", 4096), n_boot=n_boot, progress=ctx.progress,
            offset=offset if bool(offset.any()) else None,
            pooled=bool(pools_first()) if callable(pools_first) else False,
        )
    if head is not None:
        weights = linear_weights(ctx.decomposition, head.weight[ctx.target])
    else:
        A_hat = ctx.decomposition.decode(ctx.U)
        weights = gradient_weights(ctx.decomposition, ctx.split.h, A_hat, ctx.target)
    dev, dt = weights.device, weights.dtype
    return Importance(
        values=res.indices.to(dev, dt), weights=weights, method="sobol",
        ci_low=res.ci_low.to(dev, dt), ci_high=res.ci_high.to(dev, dt),
    )
