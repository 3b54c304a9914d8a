"""Planted direction pairs: activations ``x = S α + D β + c`` with known encoding and decoding directions.

The paper of EDDP (seed 001) checks its method on one synthetic setting: ``C = 16`` dimensions, 3
concepts with random unit signal vectors ``S``, 2 random distractors ``D``, exactly one concept present
per row, ``α ~ U(2.5, 5)`` for the present concept and ``U(0, 2.5)`` for the others, ``β ~ U(0, 5)``,
offset ``c = 10``. That setting is easy: random directions in 16 dimensions are nearly orthogonal, and
the one-hot rows form well separated clusters. This module makes it harder along three knobs:

``correlation`` ``ρ``
    Pairwise cosine between the signal vectors: ``s_i = √ρ b_0 + √(1 − ρ) b_i`` for orthonormal
    ``b_0 … b_k`` (so ``s_iᵀ s_j = ρ`` exactly for ``i ≠ j``; ``None``: random directions, the paper's).
``distractor_ratio`` ``r``
    Variance of each distractor coefficient relative to a signal coefficient's:
    ``β ~ U(0, w)`` with ``w² / 12 = r · var(α_i)`` (``None``: the paper's ``w = 5``, about ``r ≈ 1``).
``on_rate`` ``p``
    Probability that a concept is present in a row, independently per concept (rows may hold several
    concepts or none); ``None``: exactly one concept per row, the paper's (on-rate ``1/k``).

Ground truth, per setting: the signals ``S [k, C]`` (encoding directions), the presence ``[n, k]`` and
the oracle decoding filters ``W* [k, C]``: the rows of ``[S; D]⁺`` that belong to the concepts, so that
``W* x = α + W* c`` exactly. Thresholded at ``2.5 + w*ᵀc`` they recover the presence with IoU 1: the
best any filter can do. The scores (:func:`decoding_iou`, :func:`encoding_cosine`) match estimated
detectors to planted concepts by the Hungarian algorithm on IoU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from conceptlens.errors import ParameterError

__all__ = ["PlantedPairs", "planted_pairs", "match_by_iou", "decoding_iou", "encoding_cosine"]

LOW, HIGH = 2.5, 5.0  # α of an absent concept ~ U(0, LOW), of a present one ~ U(LOW, HIGH)


@dataclass(frozen=True)
class PlantedPairs:
    """One planted data set.

    Attributes
    ----------
    X : Tensor ``[n, C]``
        The activations ``S α + D β + c`` (all ≥ 0 for the default offset).
    signals : Tensor ``[k, C]``
        The unit encoding directions ``s_i``.
    distractors : Tensor ``[d, C]``
        The unit distractor directions.
    present : Tensor ``[n, k]`` (bool)
        Which concepts each row holds (``α_i ≥ 2.5``).
    filters : Tensor ``[k, C]``
        Oracle decoding directions ``W*``: ``X W*ᵀ = α + W* c``.
    biases : Tensor ``[k]``
        Oracle thresholds: ``present = X W*ᵀ − b > 0``.
    """

    X: torch.Tensor
    signals: torch.Tensor
    distractors: torch.Tensor
    present: torch.Tensor
    filters: torch.Tensor
    biases: torch.Tensor


def _unit_interval(name: str, v: float | None, *, closed_top: bool) -> None:
    if v is None:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or v > 1 or (v == 1 and not closed_top):
        top = "1]" if closed_top else "1)"
        raise ParameterError(f"{name} must be a number in [0, {top} or None (the paper's setting), got {v!r}")


def planted_pairs(
    n: int = 6000,
    *,
    n_concepts: int = 3,
    n_distractors: int = 2,
    dim: int = 16,
    correlation: float | None = None,
    distractor_ratio: float | None = None,
    on_rate: float | None = None,
    offset: float = 10.0,
    seed: int = 0,
) -> PlantedPairs:
    """Draw a planted data set (the paper's setting with every knob at ``None``).

    Parameters
    ----------
    n : int
        Rows.
    n_concepts, n_distractors, dim : int
        ``k``, ``d`` and ``C``; ``k + d + 1 ≤ C`` (the directions must be linearly independent).
    correlation : float in [0, 1), optional
        Pairwise cosine ``ρ`` between signal vectors.
    distractor_ratio : float > 0, optional
        ``var(β_j) / var(α_i)``.
    on_rate : float in (0, 1], optional
        Independent per-concept presence probability.
    offset : float
        The constant ``c`` added to every channel.
    seed : int
        Seed of every draw.

    Returns
    -------
    PlantedPairs
    """
    for name, v in (("n", n), ("n_concepts", n_concepts), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ParameterError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(n_distractors, bool) or not isinstance(n_distractors, int) or n_distractors < 0:
        raise ParameterError(f"n_distractors must be a non-negative integer, got {n_distractors!r}")
    if n_concepts + n_distractors + 1 > dim:
        raise ParameterError(f"n_concepts + n_distractors + 1 = {n_concepts + n_distractors + 1} directions "
                             f"do not fit in dim = {dim}; raise dim or plant fewer directions")
    _unit_interval("correlation", correlation, closed_top=False)
    _unit_interval("on_rate", on_rate, closed_top=True)
    if on_rate is not None and on_rate <= 0:
        raise ParameterError(f"on_rate must be > 0, got {on_rate!r}")
    if distractor_ratio is not None and (isinstance(distractor_ratio, bool)
                                         or not isinstance(distractor_ratio, (int, float))
                                         or not math.isfinite(distractor_ratio) or distractor_ratio <= 0):
        raise ParameterError(f"distractor_ratio must be a positive number or None, got {distractor_ratio!r}")
    g = torch.Generator().manual_seed(int(seed))
    k, d = n_concepts, n_distractors
    if correlation is None:
        S = F.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    else:
        basis, _ = torch.linalg.qr(torch.randn(dim, k + 1, generator=g, dtype=torch.float64))
        S = math.sqrt(correlation) * basis[:, 0] + math.sqrt(1 - correlation) * basis[:, 1:].T
    D = F.normalize(torch.randn(d, dim, generator=g, dtype=torch.float64), dim=1)
    if on_rate is None:
        present = F.one_hot(torch.randint(k, (n,), generator=g), k).bool()
        p = 1.0 / k
    else:
        present = torch.rand(n, k, generator=g) < on_rate
        p = float(on_rate)
    alpha = LOW * torch.rand(n, k, generator=g, dtype=torch.float64) + LOW * present
    # var(α_i) of the mixture: the on/off jump plus the uniform jitter
    var_alpha = LOW**2 * p * (1 - p) + LOW**2 / 12
    width = HIGH if distractor_ratio is None else math.sqrt(12 * distractor_ratio * var_alpha)
    beta = width * torch.rand(n, d, generator=g, dtype=torch.float64)
    c = torch.full((dim,), float(offset), dtype=torch.float64)
    X = alpha @ S + beta @ D + c
    W = torch.linalg.pinv(torch.cat([S, D]))[:, :k].T  # [k, C]: W S^T = I, W D^T = 0
    b = LOW + W @ c
    return PlantedPairs(X=X.float(), signals=S.float(), distractors=D.float(), present=present,
                        filters=W.float(), biases=b.float())


def match_by_iou(Y: torch.Tensor, present: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching of detectors to planted concepts, maximising the total IoU.

    Parameters
    ----------
    Y : Tensor ``[n, m]`` (bool)
        Which rows each of ``m`` detectors claims.
    present : Tensor ``[n, k]`` (bool)
        The planted presence.

    Returns
    -------
    rows, cols : ndarray ``[min(m, k)]``
        Detector ``rows[j]`` is matched to concept ``cols[j]``.
    iou : ndarray ``[min(m, k)]``
        The matched pairs' IoU.
    """
    Yf, Pf = Y.to(torch.float64), present.to(torch.float64)
    inter = Yf.T @ Pf
    union = Yf.sum(0)[:, None] + Pf.sum(0)[None, :] - inter
    iou = (inter / union.clamp_min(1)).numpy()
    rows, cols = linear_sum_assignment(-iou)
    return rows, cols, iou[rows, cols]


def decoding_iou(Y: torch.Tensor, present: torch.Tensor) -> float:
    """Mean IoU over the planted concepts after matching (an unmatched concept counts 0).

    Parameters
    ----------
    Y : Tensor ``[n, m]`` (bool)
    present : Tensor ``[n, k]`` (bool)
    """
    _, _, iou = match_by_iou(Y, present)
    return float(iou.sum() / present.shape[1])


def encoding_cosine(
    Y: torch.Tensor, present: torch.Tensor, est: torch.Tensor, signals: torch.Tensor
) -> float:
    """Mean cosine between matched estimated and planted signal vectors (unmatched: 0).

    Parameters
    ----------
    Y : Tensor ``[n, m]`` (bool)
        Detector claims, used for the matching.
    present : Tensor ``[n, k]`` (bool)
    est : Tensor ``[m, C]``
        Estimated encoding directions (any scale).
    signals : Tensor ``[k, C]``
        Planted encoding directions.
    """
    rows, cols, _ = match_by_iou(Y, present)
    cos = F.cosine_similarity(est[rows].double(), signals[cols].double(), dim=1)
    return float(cos.sum() / present.shape[1])
