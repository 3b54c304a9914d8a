"""The ground-truth leaderboard: every registered method scored on the synthetic concept world.

Real models have no ground truth for concepts; :mod:`conceptlens.world.concepts` draws images whose concepts,
pixels and class relevance are known. For each class ``c`` of the world, a
:class:`~conceptlens.ConceptExplainer` is fitted on that class's images (``ModelSplit(model, "auto")``) with
every registered decomposition, and its ``k`` concept maps and importances are compared with the truth.

Notation
--------
==============  ==================  ================================================================
``n``           int                 images of the class being explained
``k``           int                 concepts of the method (maps)
``K``           int                 true concepts of the world
``T``           int                 thresholds (default 0.1, 0.2, ..., 0.9)
``maps``        ``[n, k, S, S]``    concept maps (``explain(x).maps``: coefficients upsampled)
``masks``       ``[n, K, S, S]``    bool, the true visible pixels of each concept
``presence``    ``[n, K]``          bool, ``masks.any((2, 3))``
``relevance``   ``[K]``             the class's row of ``world.relevance`` (1 for its two key concepts)
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
  over present concepts (``iou``, ``pointing``) and over the class's two key concepts (``iou_key``,
  ``pointing_key``).
* **Importance.** The explainer's ``importance_`` ``[k]`` is carried through the matching to the true
  concepts. ``recall@2``: the fraction of the two key concepts among the two matched concepts with the
  largest importance. ``spearman``: the rank correlation of the matched importances with the relevance
  row, over the matched concepts (undefined, so left out of the mean, when only key concepts matched).
* **Faithfulness**: C-Deletion (lower is better) and C-Insertion (higher is better) of
  :mod:`conceptlens.metrics.craft` (target logit, baseline 0, trapezoid AUC on ``[0, 1]``), ``fid_r``
  (:func:`conceptlens.metrics.evaluate`, 0 is perfect), ``sparsity`` (fraction of non-zero codes) and the
  wall time of ``fit``.

Reference rows: ``oracle`` returns the true masks as maps (localisation 1.0 by construction: the metric
can succeed), ``oracle@layer`` the masks averaged down to the layer's ``h x w`` grid and upsampled as the
methods' maps are (the best a map read off that layer can do), and ``random`` uniform noise on the
layer's grid, upsampled (the chance level, including what the matching's choice adds: the metric can
fail). Their importances are the relevance row (oracles) and Gaussian noise (random; its recall@2 and
Spearman are averaged over 200 draws, so the row shows the expected chance level).
"""

from __future__ import annotations

import importlib
import inspect
import io
import math
import pkgutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from conceptlens.errors import ParameterError

__all__ = [
    "THRESHOLDS",
    "Localisation",
    "localisation_scores",
    "match_concepts",
    "recall_at",
    "rank_correlation",
    "score_class",
    "oracle_maps",
    "layer_oracle_maps",
    "random_maps",
    "class_images",
    "registered_methods",
    "registered_importances",
    "run",
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
    from conceptlens.metrics.craft import spearman

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
        "pair_iou": _clean(pair_iou.tolist()),
        "pair_pointing": _clean(pair_pt.tolist()),
        "pair_threshold": _clean(pair_thr.tolist()),
        "matched_importance": _clean(imp_true.tolist()),
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


# ------------------------------------------------------------------------------------------ registries
#: Modules of the registry packages that failed to import (name → error), filled by the two functions below.
IMPORT_ERRORS: dict[str, str] = {}


def _import_all(package: Any) -> None:
    """Import every module of a registry package, so that each method file that registers itself counts."""
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - a broken method file must not hide the others
            IMPORT_ERRORS[name] = _error(err)


def registered_methods() -> list[str]:
    """Names of all registered decompositions (after importing every file of ``conceptlens.decompose``)."""
    from conceptlens import decompose

    _import_all(decompose)
    return decompose.available()


def registered_importances() -> list[str]:
    """Names of all registered importance estimators (after importing ``conceptlens.importance``'s files)."""
    from conceptlens import importance

    _import_all(importance)
    return importance.available()


def class_images(
    world: Any, n_per_class: int, classes: list[int], seed: int = 0
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_per_class`` images of each class from a seeded stream of the world.

    Returns
    -------
    dict
        class ``c`` → ``(x [n, 3, S, S], masks [n, K, S, S])``.
    """
    need = {c: n_per_class for c in classes}
    got: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {c: [] for c in classes}
    batch = max(64, int(1.3 * n_per_class * world.n_classes))
    step = 0
    while any(v > 0 for v in need.values()):
        x, y, masks, _ = world.sample(batch, seed=seed + 7919 * step)
        for c in classes:
            if need[c] > 0:
                idx = (y == c).nonzero().squeeze(1)[: need[c]]
                got[c].append((x[idx], masks[idx]))
                need[c] -= idx.numel()
        step += 1
    return {c: (torch.cat([g[0] for g in got[c]]), torch.cat([g[1] for g in got[c]])) for c in classes}


# ------------------------------------------------------------------------------------------ the benchmark
#: Per-method options adapted to the 64-pixel world (``S`` is substituted by the image side).
WORLD_PARAMS: dict[str, dict[str, Any]] = {
    # CRAFT's crops: about one layout cell, i.e. one object (CRAFT's 64 px on 224 px images is ~0.3)
    "craft": {"patch_size": "S/3"},
}
#: Extra options in quick mode (only those the method's constructor accepts are passed).
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "eddp": {"max_iter": 60, "polish_iter": 10, "n_init": 1, "init_rows": 4000},
    "face": {"max_iter": 20, "encode_kl_steps": 2},
    "nmf": {"max_iter": 100},
    "craft": {"max_iter": 100},
}

_RANDOM_DRAWS = 200  # random importances averaged for the chance level of recall@2 and Spearman
_MAIN_COLS = ("iou", "iou_key", "pointing", "pointing_key", "recall_at_2", "spearman")
_FAITH_COLS = ("c_deletion", "c_insertion", "fid_r", "sparsity", "fit_s")


def _method_params(name: str, size: int, quick: bool) -> dict[str, Any]:
    from conceptlens import decompose

    want: dict[str, Any] = {}
    for key, v in WORLD_PARAMS.get(name, {}).items():
        want[key] = max(8, size // 3) if v == "S/3" else v
    if quick:
        want.update(QUICK_PARAMS.get(name, {}))
    try:
        accepted = set(inspect.signature(decompose.get(name).__init__).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a constructor without a signature
        return {}
    return {key: v for key, v in want.items() if key in accepted}


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/Inf → None, floats rounded to 5 digits."""
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 5)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _mean(vals: list[float]) -> float:
    ok = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(ok) / len(ok) if ok else float("nan")


def _summarise(name: str, kind: str, per_class: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    ok = [r for r in per_class if "error" not in r]
    row: dict[str, Any] = {"method": name, "kind": kind, **extra, "classes": len(ok)}
    for col in _MAIN_COLS + _FAITH_COLS:
        row[col] = _mean([r[col] for r in ok if col in r])
    errors = [r["error"] for r in per_class if "error" in r]
    if errors:
        row["error"] = errors[0]
    notes = sorted({r["note"] for r in ok if r.get("note")})
    if notes:
        row["note"] = "; ".join(notes)
    return row


def _degenerate(importance: torch.Tensor, contributions: torch.Tensor) -> bool:
    """True when an importance is numerical noise next to the concepts' contributions ``[n, k]``.

    PCA's codes are centred on the fit images, so ICE's mean contribution is 0 up to rounding: ranking
    that noise would score recall@2 by luck.
    """
    scale = float(contributions.detach().abs().mean())
    return scale > 0 and float(importance.detach().abs().max()) <= 1e-5 * scale


_DEGENERATE_NOTE = "importance ≈ 0 up to rounding (PCA: codes centred on the fit images); ranking undefined"


def _fit_explainer(split: Any, method: str, k: int, x: torch.Tensor, A: torch.Tensor, c: int, seed: int,
                   params: dict[str, Any]) -> tuple[Any, float]:
    from conceptlens.explainer import ConceptExplainer

    t0 = time.perf_counter()
    ex = ConceptExplainer(split, method=method, n_concepts=k, seed=seed, method_params=params, progress=False)
    ex.fit(x, c, A=A)
    return ex, time.perf_counter() - t0


def _faithfulness(ex: Any, x: torch.Tensor, A: torch.Tensor, importance: torch.Tensor | None = None
                  ) -> dict[str, float]:
    from conceptlens import metrics
    from conceptlens.metrics import holistic as metrics_holistic

    m = metrics.evaluate(ex, x, A=A)
    return {
        "c_deletion": metrics_holistic.c_deletion(ex, None, importance, A),
        "c_insertion": metrics_holistic.c_insertion(ex, None, importance, A),
        "fid_r": m["fid_r"],
        "sparsity": m["sparsity"],
    }


def _error(err: BaseException) -> str:
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    loc = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(err).__name__}: {err}{loc}"[:400]


def run(quick: bool = False, out: Path | str = Path("bench/results"), *, seed: int = 0,
        methods: list[str] | None = None, n_per_class: int | None = None, n_concepts: int | None = None,
        classes: list[int] | None = None, verbose: bool = True) -> dict[str, Any]:
    """Score every registered method and importance estimator on the concept world; write the results.

    Parameters
    ----------
    quick
        Two classes, 16 images each, ``k = 6``, shorter fits (under a minute once the model is cached)
        instead of every class with 100 images each, ``k = 10``.
    out
        Folder for ``groundtruth.json``, ``groundtruth.md`` (the tables) and ``groundtruth.png`` (a plot).
    seed
        Seed of the images, of every fit and of the random reference.
    methods
        Decompositions to score (default: every registered one).
    n_per_class, n_concepts, classes
        Override the mode's images per class, ``k`` and the classes explained.
    verbose
        Print progress lines and the table.

    Returns
    -------
    dict
        The JSON payload: ``config``, ``rows`` (one per method and reference; means over classes),
        ``importance_rows`` (the NMF bank under each estimator), ``per_class`` details and ``model``.
    """
    from conceptlens import importance as importance_mod
    from conceptlens.importance.base import Context
    from conceptlens.split.model_split import ModelSplit
    from conceptlens.world import concepts as synthetic

    out = Path(out)
    model = synthetic.trained_model(seed=0)
    world = synthetic.ConceptWorld(**model.world_config)
    split = ModelSplit(model, "auto")
    S = world.size
    h, w = int(split.activation_shape[0]), int(split.activation_shape[1])
    n_img = n_per_class or (16 if quick else 100)
    k = n_concepts or (6 if quick else 10)
    cls_list = classes if classes is not None else (list(range(min(2, world.n_classes))) if quick
                                                     else list(range(world.n_classes)))
    names = methods if methods is not None else registered_methods()
    estimators = registered_importances()
    data = class_images(world, n_img, cls_list, seed=seed)

    per_class: dict[str, list[dict[str, Any]]] = {}
    imp_per_class: dict[str, list[dict[str, Any]]] = {}
    model_acc: dict[str, float] = {}
    t_all = time.perf_counter()

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    acts: dict[int, torch.Tensor] = {}
    for c in cls_list:
        x, _ = data[c]
        acts[c] = split.g(x, progress=False)
        with torch.no_grad():
            model_acc[world.class_names[c]] = float((split.h(acts[c]).argmax(1) == c).float().mean())

    # reference rows: the metrics can succeed (oracles) and fail (random)
    for ref in ("oracle", "oracle@layer", "random"):
        rows = []
        for c in cls_list:
            x, masks = data[c]
            rel = world.relevance[c]
            if ref == "oracle":
                maps, imp = oracle_maps(masks), rel.clone()
            elif ref == "oracle@layer":
                maps, imp = layer_oracle_maps(masks, (h, w)), rel.clone()
            else:
                gen = torch.Generator().manual_seed(seed + 1000 + c)
                maps = random_maps(masks.shape[0], k, (h, w), (S, S), seed=seed + c)
                imp = torch.randn(k, generator=gen)
            r = score_class(maps, masks, imp, rel)
            if ref == "random":  # the chance level of the importance scores: mean over many random rankings
                match = torch.tensor(r["match"])
                draws = torch.randn(_RANDOM_DRAWS, k, generator=gen, dtype=torch.float64)
                vals = torch.where(match >= 0, draws[:, match.clamp_min(0)], torch.tensor(math.nan))
                keys = (rel > 0).nonzero().squeeze(1)
                r["recall_at_2"] = _mean([recall_at(v, keys, 2) for v in vals])
                r["spearman"] = _mean([rank_correlation(v, rel) for v in vals])
            rows.append({"class": world.class_names[c], **r})
        per_class[ref] = rows

    for name in names:
        t0 = time.perf_counter()
        params = _method_params(name, S, quick)
        rows = []
        for c in cls_list:
            x, masks = data[c]
            A = acts[c]
            rel = world.relevance[c]
            try:
                ex, fit_s = _fit_explainer(split, name, k, x, A, c, seed, params)
                e = ex.explain(x, A=A)
                r = score_class(e.maps, masks, ex.importance_, rel)
                if _degenerate(ex.importance_, e.contributions):
                    r.update(recall_at_2=math.nan, spearman=math.nan, note=_DEGENERATE_NOTE)
                r.update(_faithfulness(ex, x, A))
                r["fit_s"] = fit_s
                r["importance_method"] = ex.importance_result_.method
                if name == "nmf":  # the same bank under every registered importance estimator
                    U = ex.decomposition_.encode(A)
                    for est in estimators:
                        try:
                            ctx = Context(U=U, decomposition=ex.decomposition_, split=split, target=c,
                                          seed=seed, progress=False, options={})
                            t1 = time.perf_counter()
                            imp = importance_mod.get(est)(ctx).values
                            est_s = time.perf_counter() - t1
                            ri = score_class(e.maps, masks, imp, rel)
                            if _degenerate(imp, e.contributions):
                                ri.update(recall_at_2=math.nan, spearman=math.nan, note=_DEGENERATE_NOTE)
                            ri.update(_faithfulness(ex, x, A, imp))
                            ri["fit_s"] = est_s
                        except Exception as err:  # noqa: BLE001 - one failing estimator is one row's note
                            ri = {"error": _error(err)}
                        imp_per_class.setdefault(est, []).append({"class": world.class_names[c], **ri})
            except Exception as err:  # noqa: BLE001 - a failing method is recorded in its row, not fatal
                r = {"error": _error(err)}
            rows.append({"class": world.class_names[c], **r})
        per_class[name] = rows
        say(f"  {name:<8} {len(cls_list)} classes in {time.perf_counter() - t0:6.1f} s"
            + (f"  ERROR {rows[0]['error']}" if "error" in rows[0] else ""))

    rows_out = [_summarise(r, "reference", per_class[r], k=(k if r == "random" else world.n_concepts))
                for r in ("oracle", "oracle@layer", "random")]
    for name in names:
        imp_names = {r.get("importance_method") for r in per_class[name] if "importance_method" in r}
        rows_out.append(_summarise(name, "method", per_class[name], k=k,
                                   importance=",".join(sorted(i for i in imp_names if i)) or None))
    # a leaderboard: references first, then the methods by localisation (failed ones last)
    rows_out[3:] = sorted(rows_out[3:], key=lambda r: -r["iou"] if math.isfinite(r["iou"]) else math.inf)
    nmf_fit = next((r["fit_s"] for r in rows_out if r["method"] == "nmf"), float("nan"))
    for r in rows_out:
        r["fit_vs_nmf"] = r["fit_s"] / nmf_fit if nmf_fit and math.isfinite(nmf_fit) else float("nan")
    imp_rows = [_summarise("nmf", "importance", imp_per_class[e], k=k, importance=e) for e in imp_per_class]

    payload: dict[str, Any] = {
        "quick": quick,
        "config": {
            "seed": seed, "n_per_class": n_img, "n_concepts": k,
            "classes": [world.class_names[c] for c in cls_list],
            "layer": split.layer, "layer_grid": [h, w], "image_size": S, "thresholds": list(THRESHOLDS),
            "min_presence": MIN_PRESENCE, "methods": names, "estimators": estimators,
            "import_errors": dict(IMPORT_ERRORS),
            "method_params": {n: _method_params(n, S, quick) for n in names},
            "world": world.config, "concepts": world.concept_names,
        },
        "model": {"heldout_accuracy": model.training_info.get("heldout_accuracy"),
                  "accuracy_on_benchmark_images": model_acc},
        "rows": rows_out,
        "importance_rows": imp_rows,
        "per_class": per_class,
        "importance_per_class": imp_per_class,
        "seconds": time.perf_counter() - t_all,
    }
    payload = _clean(payload)
    table = markdown(payload)
    write(payload, table, out)
    say(table)
    return payload


# ------------------------------------------------------------------------------------------ output
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(payload: dict[str, Any]) -> str:
    """The leaderboard and the importance-estimator table as markdown (from a :func:`run` payload)."""
    cfg = payload["config"]
    lines = [
        f"Ground-truth leaderboard: {len(cfg['classes'])} classes × {cfg['n_per_class']} images, "
        f"k = {cfg['n_concepts']}, layer {cfg['layer']} ({cfg['layer_grid'][0]}×{cfg['layer_grid'][1]}), "
        f"seed {cfg['seed']}; means over classes. IoU at the best threshold per matched pair; ↑ higher is "
        "better, ↓ lower is better.",
        "",
        "| method | importance | IoU ↑ | IoU key ↑ | pointing ↑ | pointing key ↑ | recall@2 ↑ | Spearman ↑ "
        "| C-Del ↓ | C-Ins ↑ | Fid_r ↓ | sparsity | fit s | fit ÷ nmf | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        note = r.get("error") or r.get("note") or ("reference" if r["kind"] == "reference" else "")
        note = str(note).replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {r['method']} | {_fmt(r.get('importance'))} | {_fmt(r['iou'])} | {_fmt(r['iou_key'])} "
            f"| {_fmt(r['pointing'])} | {_fmt(r['pointing_key'])} | {_fmt(r['recall_at_2'])} "
            f"| {_fmt(r['spearman'])} | {_fmt(r['c_deletion'], 2)} | {_fmt(r['c_insertion'], 2)} "
            f"| {_fmt(r['fid_r'])} | {_fmt(r['sparsity'], 2)} | {_fmt(r['fit_s'], 2)} "
            f"| {_fmt(r.get('fit_vs_nmf'), 1)} | {note} |"
        )
    if payload.get("importance_rows"):
        lines += [
            "",
            "Importance estimators on the same NMF bank (localisation is the bank's; time: the estimator's):",
            "",
            "| estimator | recall@2 ↑ | Spearman ↑ | C-Del ↓ | C-Ins ↑ | time s | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in payload["importance_rows"]:
            note = str(r.get("error") or r.get("note") or "").replace("|", "/")
            lines.append(
                f"| {r['importance']} | {_fmt(r['recall_at_2'])} | {_fmt(r['spearman'])} "
                f"| {_fmt(r['c_deletion'], 2)} | {_fmt(r['c_insertion'], 2)} | {_fmt(r['fit_s'], 3)} "
                f"| {note} |"
            )
    return "\n".join(lines) + "\n"


def figure(payload: dict[str, Any]) -> Any:
    """A matplotlib ``Figure`` (Agg canvas) of the leaderboard: localisation and importance per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(payload["rows"])
    labels = [r["method"] for r in rows]
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})

    def bars(ax: Any, cols: list[tuple[str, str]], items: list[dict[str, Any]], names: list[str]) -> None:
        width = 0.8 / len(cols)
        for j, (col, label) in enumerate(cols):
            vals = [r.get(col) if r.get(col) is not None else 0.0 for r in items]
            offset = (j - (len(cols) - 1) / 2) * width
            ax.bar([p + offset for p in range(len(items))], vals, width, label=label)
            for p, r in enumerate(items):
                if r.get(col) is None:  # undefined (failed method, degenerate importance): say so
                    ax.text(p + offset, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        # headroom above 1 for the legend, so that it never hides a bar
        ax.set_ylim(min(0.0, *[r.get(c) or 0.0 for r in items for c, _ in cols]) - 0.02, 1.22)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncol=len(cols), frameon=False)

    loc_cols = [("iou", "IoU"), ("iou_key", "IoU key"), ("pointing", "pointing"),
                ("pointing_key", "pointing key")]
    bars(ax1, loc_cols, rows, labels)
    ax1.set_title("concept localisation (Hungarian-matched)")
    imp_items = [r for r in rows if r["kind"] != "reference" or r["method"] == "random"]
    imp_items += [{**r, "method": f"nmf/{r['importance']}"} for r in payload.get("importance_rows", [])]
    bars(ax2, [("recall_at_2", "recall@2"), ("spearman", "Spearman")], imp_items,
         [r["method"] for r in imp_items])
    ax2.set_title("importance vs true relevance")
    cfg = payload["config"]
    fig.suptitle(f"conceptlens ground truth: {len(cfg['classes'])} classes × {cfg['n_per_class']} images, "
                 f"k = {cfg['n_concepts']}", fontsize=10)
    fig.tight_layout()
    return fig


def write(payload: dict[str, Any], table: str, out: Path | str) -> dict[str, Path]:
    """Write ``groundtruth.json`` (with the environment), ``.md`` and ``.png`` into ``out`` (atomically)."""
    from conceptlens.bench import write_json
    from conceptlens.explainer import _atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out, "groundtruth", payload)}
    md = out / "groundtruth.md"
    _atomic_write(md, table.encode())
    buf = io.BytesIO()
    figure(payload).savefig(buf, format="png")
    png = out / "groundtruth.png"
    _atomic_write(png, buf.getvalue())
    paths.update({"md": md, "png": png})
    return paths
