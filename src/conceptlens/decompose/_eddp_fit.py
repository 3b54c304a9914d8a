"""EDDP's fitting steps: the loss sets, the clustering initialisation, full-data statistics, URA.

Notation as in :mod:`conceptlens.decompose.eddp`. These are pure functions of their arguments (the
estimator's parameters come in as arguments), so that the estimator's ``fit`` reads as the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F

from conceptlens.decompose._eddp_losses import CHUNK, EPS, SignalStats, entropy_bits, spherical_kmeans
from conceptlens.decompose._image_stream import RowSource, n_rows, row_chunks
from conceptlens.errors import HeadError

__all__ = ["LOSS_SETS", "WEIGHT_NAMES", "margin_scale", "signal_weights", "full_stats", "logit_gap",
           "init_detectors", "ura_entropy"]

#: The loss weights, thresholds and schedules of ``EDDP(losses=...)``. ``tau`` is the inactive
#: classifier's ``τ`` in the first phase, ``tau_late`` in the later ones; ``two_phase``: an orthogonal
#: first phase, then free filters; ``extras_early``: the two extra terms act from the first step (else
#: only after the first phase); ``ortho_fraction``: the share of ``max_iter`` in the orthogonal phase;
#: ``reference_detectors``: the number of
#: detectors ``I_ref`` the weights were set for (the margin term is scaled by ``log₂ k / log₂ I_ref``,
#: see :func:`margin_scale`; 0: no scaling).
LOSS_SETS: Mapping[str, Mapping[str, float | bool]] = MappingProxyType({
    "paper": MappingProxyType({
        "sparsity_weight": 0.85, "activation_weight": 2.8, "margin_weight": 0.6, "inactive_weight": 15.0,
        "excess_weight": 1.0, "bound_weight": 1.0, "tau": 0.9, "tau_late": 0.9, "two_phase": True,
        "extras_early": True, "reference_detectors": 500, "ortho_fraction": 0.1}),
    "paper_literal": MappingProxyType({
        "sparsity_weight": 0.85, "activation_weight": 2.8, "margin_weight": 0.6, "inactive_weight": 15.0,
        "excess_weight": 1.0, "bound_weight": 1.0, "tau": 0.9, "tau_late": 0.2, "two_phase": True,
        "extras_early": False, "reference_detectors": 0, "ortho_fraction": 1 / 3}),
    "legacy": MappingProxyType({
        "sparsity_weight": 1.0, "activation_weight": 1.0, "margin_weight": 0.1, "inactive_weight": 1.0,
        "excess_weight": 0.0, "bound_weight": 0.0, "tau": 0.5, "tau_late": 0.5, "two_phase": False,
        "extras_early": False, "reference_detectors": 0, "ortho_fraction": 0.0}),
})
#: The constructor arguments a loss set fills in when left at None.
WEIGHT_NAMES = ("sparsity_weight", "activation_weight", "margin_weight", "inactive_weight", "excess_weight",
                "bound_weight", "tau", "tau_late")


def margin_scale(losses: str, k: int) -> float:
    """Factor on the max-margin weight for ``k`` detectors under loss set ``losses``.

    The sparsity and maximum-activation terms are entropies, bounded by ``log₂ k`` bits; the margin term
    ``mean 1/M`` does not grow with ``k``. The paper's weights were set for ``I_ref = 500`` detectors,
    where the entropy terms are ``log₂ 500 / log₂ k`` times larger than with our ``k``; scaling the margin
    weight by ``log₂ k / log₂ I_ref`` keeps the balance the paper's weights strike (our reading: with the
    unscaled 0.6 on 3 planted concepts the margin term inflates every margin until every detector fires
    on every row, decoding IoU 0.33). 1 for a set without ``reference_detectors``.

    Parameters
    ----------
    losses : str
        A key of :data:`LOSS_SETS`.
    k : int
        Number of detectors.
    """
    ref = float(LOSS_SETS[losses]["reference_detectors"])
    return math.log2(max(k, 2)) / math.log2(ref) if ref > 1 else 1.0


def signal_weights(a: torch.Tensor, signal: str) -> torch.Tensor:
    """Signal-estimator weights ``[B, k]`` from detector logits: the positives' mask or ``y``."""
    return (a > 0).to(a.dtype) if signal == "positives" else torch.sigmoid(a)


def full_stats(
    rows: torch.Tensor | RowSource, Wx: torch.Tensor, bx: torch.Tensor, mu: torch.Tensor, dtype: torch.dtype,
    signal: str,
) -> SignalStats:
    """Signal statistics over every row (chunked); a concept with no positive falls back to ``y``.

    Parameters
    ----------
    rows : Tensor ``[n, C]`` or RowSource
        The fit rows (a source is read chunk by chunk).
    Wx : Tensor ``[k, C]``
        Filters in activation space.
    bx : Tensor ``[k]``
    mu : Tensor ``[C]``
        The fit rows' mean.
    dtype : torch.dtype
        Working precision.
    signal : {"positives", "weighted"}
    """
    acc: list[torch.Tensor] = []
    acc_y: list[torch.Tensor] = []
    for c in row_chunks(rows, CHUNK):
        xc = c.to(dtype) - mu
        a = xc @ Wx.T - (bx - Wx @ mu)
        s = SignalStats.batch(xc, a, signal_weights(a, signal))
        sy = SignalStats.batch(xc, a, torch.sigmoid(a))
        acc = list(s) if not acc else [x + y for x, y in zip(acc, s, strict=True)]
        acc_y = list(sy) if not acc_y else [x + y for x, y in zip(acc_y, sy, strict=True)]
    # a detector without positives (a rare concept) gets the weighted estimate
    empty = acc[0] < 0.5
    if bool(empty.any()):
        for j, (x, y) in enumerate(zip(acc, acc_y, strict=True)):
            acc[j] = torch.where(empty if x.ndim == 1 else empty[:, None], y, x)
    st = SignalStats()
    st.set(acc, n_rows(rows))
    return st


def logit_gap(rows: torch.Tensor | RowSource, W: torch.Tensor, b: torch.Tensor, signal: str) -> torch.Tensor:
    """``m_i = E_pos[a_i] − E_neg[a_i]`` over all rows (``[n, C]`` or a RowSource; weights per ``signal``),
    ``[k]``."""
    dt = torch.float64
    sums = torch.zeros(8, W.shape[0], dtype=dt, device=W.device)
    for c in row_chunks(rows, CHUNK):
        a = (c @ W.T - b).to(dt)
        om, y = signal_weights(a, signal), torch.sigmoid(a)
        sums += torch.stack([(om * a).sum(0), ((1 - om) * a).sum(0), om.sum(0), (1 - om).sum(0),
                             (y * a).sum(0), ((1 - y) * a).sum(0), y.sum(0), (1 - y).sum(0)])
    sp, sn, cp, cn, spy, sny, cpy, cny = sums
    ok = (cp > 0.5) & (cn > 0.5)
    gap = torch.where(ok, sp / cp.clamp_min(EPS) - sn / cn.clamp_min(EPS),
                      spy / cpy.clamp_min(EPS) - sny / cny.clamp_min(EPS))
    return gap.clamp_min(EPS).to(W.dtype)


def init_detectors(
    Z0: torch.Tensor, k: int, n_init: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial unit filters, thresholds and log-margins in ``z`` from spherical k-means (best of ``n_init``).

    Thresholds lie half-way between the mean projections of members and non-members; margins put the
    average member at logit +2 (``y ≈ 0.88``: confident but not saturated).

    Parameters
    ----------
    Z0 : Tensor ``[m, r]``
        Whitened rows.
    k, n_init : int
    gen : torch.Generator

    Returns
    -------
    u : Tensor ``[k, r]``
    t : Tensor ``[k]``
    log_margin : Tensor ``[k]``
    """
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    Zn = F.normalize(Z0, dim=1)
    for _ in range(n_init):
        cent, labels = spherical_kmeans(Zn, k, gen)
        obj = float((Zn @ cent.T).max(1).values.sum())
        if best is None or obj > best[0]:
            best = (obj, cent, labels)
    _, cent, labels = best  # type: ignore[misc]
    proj = Z0 @ cent.T  # [m, k]
    member = F.one_hot(labels, k).to(Z0.dtype)
    m_in = (proj * member).sum(0) / member.sum(0).clamp_min(1.0)
    m_out = (proj * (1 - member)).sum(0) / (1 - member).sum(0).clamp_min(1.0)
    gap = (m_in - m_out).clamp_min(1e-3)
    return cent, (m_in + m_out) / 2, torch.log(gap / 4)


def ura_entropy(
    head: Callable[[torch.Tensor], torch.Tensor],
    A: torch.Tensor,
    batch: int,
    Wx: torch.Tensor,
    bx: torch.Tensor,
    Q: torch.Tensor,
    Wz: torch.Tensor,
    S: torch.Tensor | None,
    gen: torch.Generator,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Entropy (bits) of ``h(x')`` on a mini-batch of ``batch`` whole items moved towards the boundaries.

    Parameters
    ----------
    head : callable
        ``[B, ..., C]`` activations → logits ``[B, K]``.
    A : Tensor ``[N, ..., C]``
        The fit input.
    batch : int
        Items per URA mini-batch.
    Wx, bx : Tensor ``[k, C]``, ``[k]``
        Detectors in activation space.
    Q : Tensor ``[r, C]``
        Whitened space → activations.
    Wz : Tensor ``[k, r]``
        Filters in ``z``.
    S : Tensor ``[k, r]`` or None
        Signals in ``z`` (None before they exist: the move is ``(Wᵀ)⁺(Wᵀx − b)``).
    gen : torch.Generator
    dtype : torch.dtype

    Returns
    -------
    Tensor
        Scalar entropy in bits, differentiable in the detectors.
    """
    leading = A.shape[0]
    B = min(batch, leading)
    items = torch.randint(leading, (B,), generator=gen, device=A.device)
    # contiguous: the same memory layout whether A is a permuted view (g's output) or read from a store,
    # so that the products below round alike
    Xb = A[items].to(dtype).contiguous()
    x = Xb.reshape(-1, Xb.shape[-1])
    # products ordered so that only [k, C] matrices meet the R rows (never an [R, C] × [C, C])
    r = x @ Wx.T - bx  # [R, k] detector logits
    if S is None:
        step = torch.linalg.pinv(Wz).T @ Q  # (Wᵀ)⁺: the shortest move onto all boundaries
    else:
        # S enters as a constant: URA aligns the detectors with the classifier, while the signals
        # stay estimates from the data (what an edit subtracts must be what the concept adds)
        Sd = S.detach()
        step = torch.linalg.pinv(Wz @ Sd.T).T @ (Sd @ Q)  # S (WᵀS)⁺: the move along the signals
    kappa = 0.5 + 0.4 * torch.rand(x.shape[0], 1, generator=gen, device=A.device, dtype=dtype)
    x_moved = x - kappa * (r @ step)
    try:
        logits = head(x_moved.reshape(Xb.shape).to(A.dtype))
    except Exception as exc:  # a head that cannot take the batch is a user error worth naming
        raise HeadError(
            f"the head given to EDDP failed on activations of shape {list(Xb.shape)} ({exc}); it must "
            "map [B, ...] activations with the fit input's layout to logits [B, K]"
        ) from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.requires_grad:
        raise HeadError(
            "the head given to EDDP must return differentiable logits [B, K]; got "
            + (f"shape {list(logits.shape)}, requires_grad={logits.requires_grad}"
               if isinstance(logits, torch.Tensor) else type(logits).__name__)
        )
    return entropy_bits(logits.to(dtype))
