"""Ground-truth scores of concept maps and importances: localisation, matching, ranking (pure functions).

Where the true concepts of an image are known (the synthetic world of :mod:`conceptlens.world` draws
them), a method's concept maps and importances can be compared with the truth. These functions take plain
tensors and know nothing of the world, the explainer or the leaderboard that calls them
(:mod:`conceptlens.world.leaderboard`).

Notation
--------
==============  ==================  ================================================================
``n``           int                 images of the class being explained
``k``           int                 concepts of the method (maps)
``K``           int                 true concepts
``T``           int                 thresholds (default 0.1, 0.2, ..., 0.9)
``maps``        ``[n, k, H, W]``    concept maps (e.g. ``explain(x).maps``: coefficients upsampled)
``masks``       ``[n, K, H, W]``    bool, the true visible pixels of each concept
``presence``    ``[n, K]``          bool, ``masks.any((2, 3))``
``relevance``   ``[K]``             the class's true relevance (1 for its key concepts, 0 otherwise)
==============  ==================  ================================================================

The scores
----------
* **Localisation.** Each map is divided by its own maximum in each image (a map with no positive value in
  an image selects nothing there) and binarised at ``> t`` for each threshold ``t``. For every pair (map
  ``j``, concept ``i``) the IoU of the binarised map with the mask is averaged over the images where
  ``i`` is present, and the pair keeps its best threshold (chosen per pair, so that a method is not
  penalised for a scale of its maps: the threshold is a property of the map, the IoU of the match).
  **Pointing game**: the fraction of the map's maximal pixels that fall inside the mask (the expected hit
  of the argmax when ties are broken at random: k-means maps have plateaus), averaged over the same
  images. Maps are matched one-to-one to the concepts present in the class (in at least 5 % of its
  images) by the Hungarian algorithm on the IoU matrix ``[k, K]`` (scipy's ``linear_sum_assignment``); a
  concept left unmatched (``k`` smaller than the number of present concepts) scores 0. Reported: the mean
  over present concepts (``iou``, ``pointing``) and over the class's key concepts (``iou_key``,
  ``pointing_key``).
* **Importance.** The method's importance ``[k]`` is carried through the matching to the true
  concepts. ``recall@2``: the fraction of the two key concepts among the two matched concepts with the
  largest importance. ``spearman``: the rank correlation of the matched importances with the relevance
  row, over the matched concepts (undefined, so left out of a mean, when only key concepts matched).

Reference maps calibrate the scores: :func:`oracle_maps` (the true masks: localisation 1.0 by
construction, so the metric can succeed), :func:`layer_oracle_maps` (the masks averaged down to a layer's
``h x w`` grid and upsampled as the explainer's maps are: the best a map read off that layer can do) and
:func:`random_maps` (uniform noise on the layer's grid, upsampled: the chance level, including what the
matching's choice adds, so the metric can fail).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from conceptlens._io import json_safe
from conceptlens.errors import ParameterError
from conceptlens.metrics.craft import spearman

__all__ = [
    "THRESHOLDS",
    "MIN_PRESENCE",
    "Localisation",
    "localisation_scores",
    "match_concepts",
    "recall_at",
    "rank_correlation",
    "score_class",
    "oracle_maps",
    "layer_oracle_maps",
    "random_maps",
    "rounded",
]

#: Thresholds on max-normalised maps (``0.1, 0.2, …, 0.9``).
THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: A concept takes part in a class's matching when present in at least this fraction of its images.
MIN_PRESENCE = 0.05


# ------------------------------------------------------------------------------------------ localisation
@dataclass(frozen=True)
class Localisation:
    """Localisation scores of every (map, concept) pair.

    Attributes
    ----------
    iou : torch.Tensor
        ``[k, K]`` float64, mean IoU over the images where the concept is present, at the best threshold.
    threshold : torch.Tensor
        ``[k, K]`` float64, that best threshold.
    pointing : torch.Tensor
        ``[k, K]`` float64, mean pointing-game hit over the same images.
    n_present : torch.Tensor
        ``[K]`` int64, images where each concept is present.
    """

    iou: torch.Tensor
    threshold: torch.Tensor
    pointing: torch.Tensor
    n_present: torch.Tensor


def localisation_scores(
    maps: torch.Tensor,
    masks: torch.Tensor,
    thresholds: tuple[float, ...] | torch.Tensor = THRESHOLDS,
    *,
    batch_size: int = 16,
) -> Localisation:
    """IoU at the best threshold and pointing-game accuracy of every map against every true mask.

    Parameters
    ----------
    maps
        ``[n, k, H, W]`` concept maps (any real values; only the positive part can select pixels).
    masks
        ``[n, K, H, W]`` bool true masks (same ``n``, ``H``, ``W``).
    thresholds
        ``T`` values in ``(0, 1)``: a pixel is selected when ``map / max(map) > t`` (max over the image).
    batch_size
        Images per step (memory is about ``batch_size·T·k·H·W`` floats).

    Returns
    -------
    Localisation
        ``iou``, ``threshold`` and ``pointing`` ``[k, K]``; pairs whose concept is never present score 0.
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        raise ParameterError(f"maps must be a tensor [n, k, H, W], got {list(getattr(maps, 'shape', []))}")
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[0] != maps.shape[0] \
            or masks.shape[2:] != maps.shape[2:]:
        raise ParameterError(
            f"masks must be [n, K, H, W] with n, H, W of the maps {list(maps.shape)}, "
            f"got {list(getattr(masks, 'shape', []))}"
        )
    thr = torch.as_tensor(thresholds, dtype=torch.float32).reshape(-1)
    if thr.numel() == 0 or bool(((thr <= 0) | (thr >= 1)).any()):
        raise ParameterError(f"thresholds must be non-empty values in (0, 1), got {thr.tolist()}")
    n, k = maps.shape[:2]
    K = masks.shape[1]
    T = thr.numel()
    P = maps.shape[2] * maps.shape[3]
    masks = masks.to(torch.bool)
    presence = masks.flatten(2).any(-1)  # [n, K]
    iou_sum = torch.zeros(T, k, K, dtype=torch.float64)
    hit_sum = torch.zeros(k, K, dtype=torch.float64)
    thr = thr.to(maps.device)
    for s in range(0, n, batch_size):
        m = maps[s : s + batch_size].flatten(2).float()  # [b, k, P]
        b = m.shape[0]
        M = masks[s : s + batch_size].flatten(2).float()  # [b, K, P]
        pres = presence[s : s + batch_size].double().cpu()  # [b, K]
        mx = m.amax(-1, keepdim=True)  # [b, k, 1]
        pos = mx > 0
        norm = m / torch.where(pos, mx, torch.ones_like(mx))
        # [b, T, k, P]: 0/1 floats so that the intersections are one batched matrix product (exact sums)
        sel = ((norm[:, None] > thr[None, :, None, None]) & pos[:, None]).float()
        inter = torch.bmm(sel.reshape(b, T * k, P), M.transpose(1, 2)).reshape(b, T, k, K)
        union = sel.sum(-1)[..., None] + M.sum(-1)[:, None, None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
        iou_sum += (iou.double().cpu() * pres[:, None, None, :]).sum(0)
        top = ((m == mx) & pos).float()  # [b, k, P] the maximal pixels (several on a plateau)
        frac = torch.bmm(top, M.transpose(1, 2)) / top.sum(-1, keepdim=True).clamp_min(1)  # [b, k, K]
        hit_sum += (frac.double().cpu() * pres[:, None, :]).sum(0)
    count = presence.sum(0).cpu()  # [K]
    den = count.clamp_min(1).double()
    mean_iou = iou_sum / den  # [T, k, K]
    best, t_idx = mean_iou.max(0)  # first (lowest) threshold among ties
    return Localisation(iou=best, threshold=thr.double().cpu()[t_idx], pointing=hit_sum / den,
                        n_present=count.long())


def match_concepts(score: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """One-to-one matching of maps to true concepts maximising the total score (Hungarian algorithm).

    Parameters
    ----------
    score
        ``[k, K]`` score of each (map, concept) pair (e.g. :attr:`Localisation.iou`).
    valid
        ``[K]`` bool, the concepts that take part (default all).

    Returns
    -------
    torch.Tensor
        ``[K]`` int64: the map matched to each concept, ``-1`` for an invalid or unmatched concept.
    """
    from scipy.optimize import linear_sum_assignment

    if not isinstance(score, torch.Tensor) or score.ndim != 2:
        raise ParameterError(f"score must be a tensor [k, K], got {list(getattr(score, 'shape', []))}")
    K = score.shape[1]
    valid = torch.ones(K, dtype=torch.bool) if valid is None else valid.to(torch.bool).cpu()
    if valid.shape != (K,):
        raise ParameterError(f"valid must be [K] = [{K}] bool, got {list(valid.shape)}")
    cols = valid.nonzero().squeeze(1)
    out = torch.full((K,), -1, dtype=torch.int64)
    if cols.numel() == 0 or score.shape[0] == 0:
        return out
    sub = score.detach().double().cpu()[:, cols].numpy()
    r, c = linear_sum_assignment(sub, maximize=True)
    out[cols[torch.as_tensor(c, dtype=torch.int64)]] = torch.as_tensor(r, dtype=torch.int64)
    return out


# ------------------------------------------------------------------------------------------ importance
def recall_at(values: torch.Tensor, keys: torch.Tensor, r: int = 2) -> float:
    """Fraction of ``keys`` among the ``r`` concepts with the largest ``values``.

    Parameters
    ----------
    values
        ``[K]`` importance of each true concept; NaN for a concept without a value (unmatched), which is
        never ranked.
    keys
        ``[m]`` int64 indices of the relevant concepts.
    r
        How many top concepts to look at.

    Returns
    -------
    float
        In ``[0, 1]``; ties are broken towards the lower concept index.
    """
    v = values.detach().double().cpu()
    ranked = torch.argsort(torch.where(torch.isnan(v), -math.inf, -v), stable=True)
    ranked = ranked[~torch.isnan(v[ranked])][:r]
    keyset = {int(i) for i in keys.reshape(-1).tolist()}
    return len(keyset & {int(i) for i in ranked.tolist()}) / max(len(keyset), 1)


def rank_correlation(values: torch.Tensor, relevance: torch.Tensor) -> float:
    """Spearman correlation of ``values [K]`` with ``relevance [K]`` over the entries where values is not NaN.

    NaN when fewer than two entries remain or either side is constant there (average ranks for ties).
    """
    v = values.detach().double().cpu()
    ok = ~torch.isnan(v)
    if int(ok.sum()) < 2:
        return float("nan")
    return float(spearman(v[ok], relevance.detach().double().cpu()[ok]))


def score_class(
    maps: torch.Tensor,
    masks: torch.Tensor,
    importance: torch.Tensor | None,
    relevance: torch.Tensor,
    *,
    thresholds: tuple[float, ...] | torch.Tensor = THRESHOLDS,
    min_presence: float = MIN_PRESENCE,
) -> dict[str, Any]:
    """Localisation and importance scores of one class's explanation.

    Parameters
    ----------
    maps
        ``[n, k, H, W]`` concept maps of the class's images.
    masks
        ``[n, K, H, W]`` bool true masks.
    importance
        ``[k]`` the method's importance of its concepts, or None (importance scores are then NaN).
    relevance
        ``[K]`` the class's true relevance (its key concepts are the entries > 0).
    thresholds, min_presence
        See :func:`localisation_scores` and :data:`MIN_PRESENCE`.

    Returns
    -------
    dict
        ``iou``, ``iou_key``, ``pointing``, ``pointing_key``, ``recall_at_2``, ``spearman`` (floats),
        ``match`` ``[K]`` (map index per concept, -1 when none), ``pair_iou``, ``pair_pointing``,
        ``pair_threshold`` ``[K]`` (NaN when unmatched) and ``n_present`` ``[K]`` as lists.
    """
    loc = localisation_scores(maps, masks, thresholds)
    n = maps.shape[0]
    valid = loc.n_present >= max(2, math.ceil(min_presence * n))
    match = match_concepts(loc.iou, valid)
    K = masks.shape[1]
    ar = torch.arange(K)
    has = match >= 0
    idx = match.clamp_min(0)
    nan = torch.full((K,), math.nan, dtype=torch.float64)
    pair_iou = torch.where(has, loc.iou[idx, ar], nan)
    pair_pt = torch.where(has, loc.pointing[idx, ar], nan)
    pair_thr = torch.where(has, loc.threshold[idx, ar], nan)
    key = relevance.detach().cpu() > 0
    keys = key.nonzero().squeeze(1)

    def mean_over(sel: torch.Tensor, v: torch.Tensor) -> float:
        # an unmatched concept (k smaller than the present ones) scores 0, not "not counted"
        sel = sel & valid
        return float(torch.nan_to_num(v[sel], nan=0.0).mean()) if bool(sel.any()) else float("nan")

    out: dict[str, Any] = {
        "iou": mean_over(torch.ones(K, dtype=torch.bool), pair_iou),
        "iou_key": mean_over(key, pair_iou),
        "pointing": mean_over(torch.ones(K, dtype=torch.bool), pair_pt),
        "pointing_key": mean_over(key, pair_pt),
    }
    if importance is None:
        out["recall_at_2"] = out["spearman"] = float("nan")
        imp_true = nan
    else:
        imp = importance.detach().double().cpu().reshape(-1)
        if imp.numel() != maps.shape[1]:
            raise ParameterError(f"importance must be [k] = [{maps.shape[1]}], got {list(importance.shape)}")
        imp_true = torch.where(has, imp[idx], nan)
        out["recall_at_2"] = recall_at(imp_true, keys, 2)
        out["spearman"] = rank_correlation(imp_true, relevance)
    out.update({
        "match": match.tolist(),
        "pair_iou": rounded(pair_iou.tolist()),
        "pair_pointing": rounded(pair_pt.tolist()),
        "pair_threshold": rounded(pair_thr.tolist()),
        "matched_importance": rounded(imp_true.tolist()),
        "n_present": loc.n_present.tolist(),
    })
    return out



# ------------------------------------------------------------------------------------------ references
def oracle_maps(masks: torch.Tensor) -> torch.Tensor:
    """The true masks as concept maps: ``[n, K, H, W]`` bool → float32 (1 inside, 0 outside)."""
    return masks.to(torch.float32)


def layer_oracle_maps(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The true masks seen at a layer's resolution: area-averaged to ``grid = (h, w)``, upsampled back.

    The upsampling is the explainer's (bilinear, ``align_corners=False``), so this is the best a concept
    map read off an ``h x w`` layer can localise. ``[n, K, H, W]`` → ``[n, K, H, W]`` float32.
    """
    H, W = masks.shape[-2:]
    coarse = F.adaptive_avg_pool2d(masks.to(torch.float32), grid)
    return F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)


def random_maps(n: int, k: int, grid: tuple[int, int], size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Chance-level maps: uniform noise on an ``h x w`` grid, upsampled bilinearly → ``[n, k, H, W]``."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, k, *grid, generator=gen)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)



# ------------------------------------------------------------------------------------------ output
def rounded(v: Any, digits: int = 5) -> Any:
    """``v`` made JSON-safe (:func:`conceptlens._io.json_safe`: NaN/Inf → None) with every float rounded
    to ``digits`` digits, through dicts and lists."""
    return _round(json_safe(v), digits)


def _round(v: Any, digits: int) -> Any:
    if isinstance(v, float):
        return round(v, digits)
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x, digits) for x in v]
    return v
