"""EDDP's building blocks: the whitening, the initial clustering, the detector losses, the signal statistics.

Notation as in :mod:`conceptlens.decompose.eddp`: ``x [n, C]`` activations, ``z = (x − μ) P [n, r]`` the
whitened learning space (``x − μ = z Q`` on the data's span), ``a [B, k]`` detector logits, ``y = σ(a)``
detector responses, ``q = y / ‖y‖₁``, ``M [k]`` margins. Every function here is pure (no fitted state,
no data beyond its arguments): the estimator composes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from conceptlens.decompose._image_stream import RowSource, n_rows, row_chunks
from conceptlens.decompose.base import check_finite
from conceptlens.errors import ActivationError

__all__ = [
    "spherical_kmeans",
    "detector_losses",
    "self_weighted_mean",
    "extra_sparsity_losses",
    "orthonormalise",
    "orthogonality_loss",
    "entropy_bits",
    "SignalStats",
    "whitening",
    "moments",
]

LN2 = math.log(2.0)
EPS = 1e-12
CHUNK = 16384  # rows per chunk in full passes (bounds temporary memory for wide layers)


def spherical_kmeans(
    Z: torch.Tensor, k: int, gen: torch.Generator, n_iter: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (cosine similarity) with greedy k-means++-style seeding.

    Parameters
    ----------
    Z : Tensor ``[n, C]``
        Rows with unit ℓ2 norm (zero rows are allowed and never chosen as seeds).
    k : int
        Number of clusters, ``k ≤ n``.
    gen : torch.Generator
        Source of the seeding draws.
    n_iter : int
        Maximum assignment/update iterations (stops early once at most 0.1 % of the labels change).

    Returns
    -------
    centroids : Tensor ``[k, C]``
        Unit-norm mean directions.
    labels : Tensor ``[n]``
        Cluster of each row.
    """
    n = Z.shape[0]
    # Seeding: distance 1 − cos to the nearest chosen centre, drawn ∝ distance² (k-means++).
    valid = (Z.square().sum(1) > 0.5).to(torch.float64)
    first = int(torch.multinomial(valid + EPS, 1, generator=gen))
    idx = [first]
    closest = (1.0 - Z @ Z[first]).clamp_min(0.0).to(torch.float64) * valid
    for _ in range(1, k):
        p = closest.square()
        if float(p.sum()) <= 0:
            nxt = int(torch.randint(n, (1,), generator=gen))
        else:
            nxt = int(torch.multinomial(p, 1, generator=gen))
        idx.append(nxt)
        closest = torch.minimum(closest, (1.0 - Z @ Z[nxt]).clamp_min(0.0).to(torch.float64) * valid)
    centres = Z[torch.tensor(idx, device=Z.device)].clone()
    labels = torch.full((n,), -1, dtype=torch.long, device=Z.device)
    for _ in range(n_iter):
        sim = Z @ centres.T
        new_labels = sim.argmax(1)
        changed = int((new_labels != labels).sum())
        labels = new_labels
        # only an initialisation: stop once fewer than 0.1 % of the rows switch cluster
        if changed <= n // 1000:
            break
        onehot = F.one_hot(labels, k).to(Z.dtype)
        sums = onehot.T @ Z
        norms = sums.norm(dim=1, keepdim=True)
        empty = (norms[:, 0] <= EPS).nonzero().flatten()
        centres = sums / norms.clamp_min(EPS)
        if empty.numel():
            # Re-seed an empty cluster with the rows least similar to their own centre.
            worst = torch.topk(-sim.max(1).values, empty.numel()).indices
            centres[empty] = Z[worst]
    else:
        labels = (Z @ centres.T).argmax(1)
    return centres, labels


def detector_losses(
    logits: torch.Tensor, margins: torch.Tensor, *, gamma: float, tau: float
) -> dict[str, torch.Tensor]:
    """The four directional-clustering losses of a mini-batch of detector logits.

    Parameters
    ----------
    logits : Tensor ``[B, k]``
        Detector logits ``a = w_iᵀx − b_i`` of ``B`` rows.
    margins : Tensor ``[k]``
        Margins ``M_i > 0`` (in the standardised space).
    gamma : float
        Exponent ``γ`` of the inactive-classifier loss.
    tau : float
        ``τ``; the inactive threshold is ``ν = τ / k``.

    Returns
    -------
    dict
        Scalars ``sparsity`` (``E[H(q)]``, bits), ``max_activation`` (``−E[qᵀ log₂ y]``),
        ``max_margin`` (``mean 1/M``) and ``inactive`` (``E_i[(1/ν) ReLU(ν − E[y_i^γ])]``).
    """
    k = logits.shape[1]
    y = torch.sigmoid(logits)
    q = y / y.sum(1, keepdim=True).clamp_min(EPS)
    log2_y = F.logsigmoid(logits) / LN2
    sparsity = -(q * torch.log2(q.clamp_min(EPS))).sum(1).mean()
    max_act = -(q * log2_y).sum(1).mean()
    nu = tau / k
    # y^γ through exp(γ log y): finite gradients even where y underflows to 0
    mean_act = torch.exp(gamma * F.logsigmoid(logits)).mean(0)
    inactive = (F.relu(nu - mean_act) / nu).mean()
    return {"sparsity": sparsity, "max_activation": max_act, "max_margin": (1.0 / margins).mean(),
            "inactive": inactive}


def self_weighted_mean(v: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    """The self-weighted mean ``Σ v_j^{p+1} / Σ v_j^p`` of non-negative values: a soft maximum.

    Each value is weighted by its own ``p``-th power, so the largest values dominate (``p = 0``: the plain
    mean; ``p → ∞``: the maximum). 0 when every value is 0.

    Parameters
    ----------
    v : Tensor ``[m]``
        Non-negative values.
    p : float
        Exponent of the self-weights (the paper's 4).

    Returns
    -------
    Tensor
        Scalar in ``[mean(v), max(v)]``.
    """
    # scale by the maximum (detached) before the power: v^4 of small values would underflow
    top = v.detach().max().clamp_min(EPS)
    w = (v / top) ** p
    return (w * v).sum() / w.sum().clamp_min(EPS)


def extra_sparsity_losses(logits: torch.Tensor, *, p: float = 4.0) -> dict[str, torch.Tensor]:
    """The paper's two later terms: the excessively-active penalty and the per-row sparsity bound.

    Both are self-weighted (soft-max) reductions with exponent ``p`` (:func:`self_weighted_mean`): they
    act on the worst detectors and the worst rows rather than on the averages the four basic losses use.

    Parameters
    ----------
    logits : Tensor ``[B, k]``
        Detector logits of ``B`` rows.
    p : float
        Exponent of the self-weighted reductions.

    Returns
    -------
    dict
        ``excess_activity``: ``k · SW_p(ρ)`` over detectors, ``ρ_i = E_rows[y_i]`` (1 when every
        detector fires on the same share; larger when one detector claims more than its share of rows);
        ``sparsity_bound``: ``SW_p(H(q_r))`` over rows, a soft maximum of the per-row entropy (bits).
    """
    k = logits.shape[1]
    y = torch.sigmoid(logits)
    rho = y.mean(0)
    q = y / y.sum(1, keepdim=True).clamp_min(EPS)
    h = -(q * torch.log2(q.clamp_min(EPS))).sum(1)
    return {"excess_activity": k * self_weighted_mean(rho, p), "sparsity_bound": self_weighted_mean(h, p)}


def orthonormalise(v: torch.Tensor) -> torch.Tensor:
    """The orthonormal rows nearest to ``v [k, r]`` (polar factor ``U Vᵀ`` of ``v = U Σ Vᵀ``; ``k ≤ r``)."""
    U, _, Vh = torch.linalg.svd(v, full_matrices=False)
    return U @ Vh


def orthogonality_loss(filters: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """Filter–signal orthogonality ``√(E_{i≠j}[(w̄ᵢᵀ s̄ⱼ)²])`` (bars: unit vectors).

    Parameters
    ----------
    filters, signals : Tensor ``[k, C]``

    Returns
    -------
    Tensor
        Scalar; 0 for ``k = 1``.
    """
    k = filters.shape[0]
    if k < 2:
        return filters.sum() * 0.0
    G = F.normalize(filters, dim=1) @ F.normalize(signals, dim=1).T
    off = ~torch.eye(k, dtype=torch.bool, device=G.device)
    return torch.sqrt(G[off].square().mean() + EPS)


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (bits) of ``softmax(logits [B, K])``."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1).mean() / LN2


class SignalStats:
    """Weighted sufficient statistics of ``(x − μ, a_i)`` per concept, for the pattern estimator.

    Per concept ``i`` (row weights ``ω_ri``): ``Σω``, ``Σω x``, ``Σω a``, ``Σω a x``, ``Σω a²`` — all
    that ``cov[x, a_i]`` and ``var(a_i)`` need. Stored as means over rows, so that full-pass values and
    exponential moving averages of mini-batch values share one scale.
    """

    def __init__(self) -> None:
        self.sums: tuple[torch.Tensor, ...] = ()

    @staticmethod
    def batch(xc: torch.Tensor, a: torch.Tensor, om: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sums over the rows of ``xc [B, C]``, logits ``a [B, k]`` and weights ``om [B, k]``."""
        oa = om * a
        k = a.shape[1]
        both = torch.cat([om, oa], dim=1).T @ xc  # one product for Σω x and Σω a x
        return (om.sum(0), both[:k], oa.sum(0), both[k:], (oa * a).sum(0))

    def set(self, sums: Sequence[torch.Tensor], n: int) -> None:
        self.sums = tuple(s / n for s in sums)

    def update(self, sums: Sequence[torch.Tensor], n: int, decay: float) -> None:
        self.sums = tuple(decay * c + (1 - decay) * s / n for c, s in zip(self.sums, sums, strict=True))

    def pattern(self, P: torch.Tensor) -> torch.Tensor:
        """Signals ``cov[z, a_i] / var(a_i)`` ``[k, r]`` in the whitened space ``z = (x − μ) P``."""
        w, wx, wa, wax, waa = self.sums
        W = w.clamp_min(EPS)
        mx, ma = wx / W[:, None], wa / W
        cov = wax / W[:, None] - ma[:, None] * mx
        var_a = (waa / W - ma.square()).clamp_min(EPS)
        return (cov @ P) / var_a[:, None]


def whitening(
    rows: torch.Tensor | RowSource, sample: torch.Tensor, eps: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shrunk whitening ``z = (x − μ) P`` and its inverse on the data's span, ``x − μ = z Q``.

    Channels are standardised (``σ``), then rotated onto the eigenvectors ``V`` of their correlation
    matrix (estimated on ``sample``) and scaled by ``(λ + eps)^{-1/2}``; directions with
    ``λ ≤ 1e-6 λ_max`` carry no variance and are dropped. ``eps = 0`` is full whitening; a large
    ``eps`` approaches plain standardisation.

    Returns
    -------
    mu : Tensor ``[C]``
    P : Tensor ``[C, r]``
    Q : Tensor ``[r, C]``
    """
    mu, sd = moments(rows, dtype)
    if float(sd.max()) <= 0:
        raise ActivationError("the activations are constant: every row is the same, nothing to find")
    # channels that never vary carry no concept; a unit scale keeps them at z ≡ 0
    sd = torch.where(sd > 1e-6 * sd.max(), sd, torch.ones_like(sd))
    Zs = (sample.to(dtype) - mu) / sd
    # float32 products are accurate enough here: eigenvalues far below the shrinkage ε do not matter
    cov = (Zs.T @ Zs / Zs.shape[0]).to(torch.float64)
    cov = (cov + cov.T) / 2
    lam, V = torch.linalg.eigh(cov)
    keep = lam > 1e-6 * lam.max()
    lam, V = lam[keep], V[:, keep]
    d = (lam + eps).rsqrt()
    P = (V * d) / sd.to(torch.float64)[:, None]
    Q = (V / d).T * sd.to(torch.float64)
    return mu, P.to(dtype), Q.to(dtype)


def moments(rows: torch.Tensor | RowSource, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) standard deviation ``[C]``, chunked, accumulated in float64.

    ``rows``: ``[n, C]`` in memory or a :class:`~conceptlens.decompose._image_stream.RowSource` (two passes;
    a store's chunks are checked for NaN / Inf on the first).
    """
    n = n_rows(rows)
    s: torch.Tensor | None = None
    for c in row_chunks(rows, CHUNK):
        if isinstance(rows, RowSource):
            check_finite(c)
        part = c.sum(0, dtype=torch.float64)
        s = part if s is None else s + part
    if s is None:
        raise ActivationError("no activation rows to fit on (empty input)")
    mu = s / n
    mu_lo: torch.Tensor | None = None
    ss = torch.zeros_like(s)
    for c in row_chunks(rows, CHUNK):
        if mu_lo is None:
            mu_lo = mu.to(c.dtype)
        # deviations from the mean are small numbers: float32 squares, float64 sums are accurate enough
        ss += (c - mu_lo).square().sum(0, dtype=torch.float64)
    return mu.to(dtype), (ss / n).sqrt().to(dtype)
