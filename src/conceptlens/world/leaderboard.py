"""The ground-truth leaderboard: every registered method scored on the synthetic concept world.

Real models have no ground truth for concepts; :mod:`conceptlens.world.concepts` draws images whose
concepts, pixels and class relevance are known, and :mod:`conceptlens.world.cnn` trains a model on them.
For each class ``c`` of the world, a :class:`~conceptlens.explainer.ConceptExplainer` is fitted on that
class's images (``ModelSplit(model, "auto")``) with every registered decomposition, and its ``k`` concept
maps and importances are compared with the truth by the pure scores of
:mod:`conceptlens.metrics.groundtruth` (localisation, matching, recall@2, Spearman; the notation is
fixed there). :func:`run` returns the numbers; ``conceptlens bench groundtruth``
(:mod:`conceptlens.bench.groundtruth`) writes them as JSON, a markdown table and a figure.

Held-out images: each class's images are split in two (seeded, :data:`~conceptlens.metrics.face.HOLDOUT`
of them held out, :func:`~conceptlens.metrics.face.holdout_split`); the explainer is fitted (bank and
importance) on the fit half and every score of a row is measured on the held-out half, with the codes of
``encode`` (non-negative least squares with the bank frozen for the non-negative methods; FACE's encode
adds no KL term by default, as its authors project new images). Scoring the fitted images themselves
would favour a method whose codes are fitted against those images' own predictions (FACE's KL term).
The same explanation's C-Deletion and C-Insertion on the fit half are kept as the labelled extra
``c_deletion_fit`` / ``c_insertion_fit`` (JSON only).

Beside the localisation and importance scores, each row has the faithfulness numbers of
:mod:`conceptlens.metrics`: C-Deletion (lower is better) and C-Insertion (higher is better) of CRAFT's
authors (target logit, baseline 0, trapezoid AUC on ``[0, 1]``), ``fid_r`` (0 is perfect), ``sparsity``
(fraction of non-zero codes) and the wall time of ``fit``.

The runner never names a method: it reads each decomposition's declarations (``quick_params`` for quick
runs; a method with ``fit_on == "crops"`` gets crops of about one layout cell, ``max(8, S // 3)`` pixels,
since the world's objects fill about a third of the image side, as CRAFT's 64-pixel crops do on 224-pixel
photos). The ``reference`` decomposition, when given, has its bank scored under every registered
importance estimator, and every method's fit time is divided by its own.

Reference rows: ``oracle`` (the true masks as maps), ``oracle@layer`` (the masks at the layer's grid) and
``random`` (noise on the layer's grid): see :mod:`conceptlens.metrics.groundtruth`. Their importances are
the relevance row (oracles) and Gaussian noise (random; its recall@2 and Spearman are averaged over 200
draws, so the row shows the expected chance level).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conceptlens.errors import ParameterError
from conceptlens.metrics import groundtruth as _groundtruth
from conceptlens.metrics.face import HOLDOUT, holdout_split
from conceptlens.metrics.groundtruth import (
    MIN_PRESENCE,
    THRESHOLDS,
    Localisation,  # noqa: F401 (re-exported)
    layer_oracle_maps,
    localisation_scores,  # noqa: F401 (re-exported)
    match_concepts,  # noqa: F401 (re-exported)
    oracle_maps,
    random_maps,
    rank_correlation,
    recall_at,
    rounded,
    score_class,
)

if TYPE_CHECKING:
    from conceptlens.world.concepts import ConceptWorld

__all__ = [
    "class_images",
    "registered_methods",
    "registered_importances",
    "method_params",
    "run",
    # the scores and reference maps, at home in conceptlens.metrics.groundtruth
    *(name for name in _groundtruth.__all__ if name != "rounded"),
]

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
    world: ConceptWorld, n_per_class: int, classes: list[int], seed: int = 0
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


# ------------------------------------------------------------------------------------------ the runner
_RANDOM_DRAWS = 200  # random importances averaged for the chance level of recall@2 and Spearman
_MAIN_COLS = ("iou", "iou_key", "pointing", "pointing_key", "recall_at_2", "spearman")
_FAITH_COLS = ("c_deletion", "c_insertion", "fid_r", "sparsity", "fit_s", "c_deletion_fit", "c_insertion_fit")


def method_params(name: str, size: int, quick: bool) -> dict[str, Any]:
    """The options the leaderboard gives decomposition ``name`` on ``size``-pixel images (its declarations).

    A method fitted on crops (``fit_on == "crops"``) gets ``patch_size = max(8, size // 3)`` (about one
    layout cell, i.e. one object); ``quick`` adds its ``quick_params``. Only the options the method's
    constructor accepts are returned.
    """
    from conceptlens import decompose

    cls = decompose.get(name)
    want: dict[str, Any] = {}
    if cls.fit_on == "crops":
        want["patch_size"] = max(8, size // 3)
    if quick:
        want.update(cls.quick_params)
    try:
        accepted = set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a constructor without a signature
        return {}
    return {key: v for key, v in want.items() if key in accepted}


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

    Codes centred on the fit images (a principal-component basis) make ICE's mean contribution 0 up to
    rounding: ranking that noise would score recall@2 by luck.
    """
    scale = float(contributions.detach().abs().mean())
    return scale > 0 and float(importance.detach().abs().max()) <= 1e-5 * scale


_DEGENERATE_NOTE = "importance ≈ 0 up to rounding (codes centred on the fit images); ranking undefined"


def _fit_explainer(split: Any, method: str, k: int, x: torch.Tensor, A: torch.Tensor, c: int, seed: int,
                   params: dict[str, Any]) -> tuple[Any, float]:
    from conceptlens.explainer import ConceptExplainer

    t0 = time.perf_counter()
    ex = ConceptExplainer(split, method=method, n_concepts=k, seed=seed, method_params=params, progress=False)
    ex.fit(x, c, A=A)
    return ex, time.perf_counter() - t0


def _faithfulness(ex: Any, x: torch.Tensor, A: torch.Tensor, A_fit: torch.Tensor,
                  importance: torch.Tensor | None = None) -> dict[str, float]:
    """Faithfulness on the held-out ``x [n,3,S,S]`` / ``A [n,h,w,C]``, plus C-Del / C-Ins on ``A_fit``."""
    from conceptlens import metrics

    m = metrics.evaluate(ex, x, A=A)
    return {
        "c_deletion": metrics.c_deletion(ex, None, importance, A),
        "c_insertion": metrics.c_insertion(ex, None, importance, A),
        "fid_r": m["fid_r"],
        "sparsity": m["sparsity"],
        "c_deletion_fit": metrics.c_deletion(ex, None, importance, A_fit),
        "c_insertion_fit": metrics.c_insertion(ex, None, importance, A_fit),
    }


def _error(err: BaseException) -> str:
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    loc = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(err).__name__}: {err}{loc}"[:400]


def run(quick: bool = False, *, seed: int = 0, methods: list[str] | None = None,
        n_per_class: int | None = None, n_concepts: int | None = None, classes: list[int] | None = None,
        reference: str | None = None, verbose: bool = True) -> dict[str, Any]:
    """Score every registered method (and importance estimator) on the concept world.

    Parameters
    ----------
    quick
        Two classes, 16 images each, ``k = 6``, shorter fits (under a minute once the model is cached)
        instead of every class with 100 images each, ``k = 10``.
    seed
        Seed of the images, of every fit and of the random reference.
    methods
        Decompositions to score (default: every registered one).
    n_per_class, n_concepts, classes
        Override the mode's images per class (≥ 2: :data:`~conceptlens.metrics.face.HOLDOUT` of them are
        held out for scoring, the rest fitted on), ``k`` and the classes explained.
    reference
        A decomposition among ``methods`` whose bank is also scored under every registered importance
        estimator (``importance_rows``) and whose fit time every row is divided by (``fit_vs_<reference>``);
        None: neither.
    verbose
        Print a progress line per method.

    Returns
    -------
    dict
        The JSON payload: ``config``, ``rows`` (one per method and reference; means over classes),
        ``importance_rows`` (the reference's bank under each estimator), ``per_class`` details and ``model``.
    """
    from conceptlens import importance as importance_mod
    from conceptlens.importance.base import Context
    from conceptlens.split.model_split import ModelSplit
    from conceptlens.world.cnn import trained_model
    from conceptlens.world.concepts import ConceptWorld

    model = trained_model(seed=0)
    world = ConceptWorld(**model.world_config)
    split = ModelSplit(model, "auto")
    S = world.size
    h, w = int(split.activation_shape[0]), int(split.activation_shape[1])
    n_img = n_per_class or (16 if quick else 100)
    if n_img < 2:
        raise ParameterError(f"n_per_class must be ≥ 2 (half of each class is fitted on, half scored), "
                             f"got {n_img}")
    k = n_concepts or (6 if quick else 10)
    cls_list = classes if classes is not None else (list(range(min(2, world.n_classes))) if quick
                                                     else list(range(world.n_classes)))
    names = methods if methods is not None else registered_methods()
    estimators = registered_importances()
    data = class_images(world, n_img, cls_list, seed=seed)
    # Each class's images: the explainer is fitted on one part and scored on the other (seeded per class).
    parts = {c: holdout_split(torch.zeros(n_img, dtype=torch.long), HOLDOUT, seed=seed + c) for c in cls_list}

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
            masks = data[c][1][parts[c][1]]
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
        params = method_params(name, S, quick)
        rows = []
        for c in cls_list:
            fit, held = parts[c]
            x, masks = data[c][0][held], data[c][1][held]
            A, A_fit = acts[c][held], acts[c][fit]
            rel = world.relevance[c]
            try:
                ex, fit_s = _fit_explainer(split, name, k, data[c][0][fit], A_fit, c, seed, params)
                e = ex.explain(x, A=A)
                r = score_class(e.maps, masks, ex.importance_, rel)
                if _degenerate(ex.importance_, e.contributions):
                    r.update(recall_at_2=math.nan, spearman=math.nan, note=_DEGENERATE_NOTE)
                r.update(_faithfulness(ex, x, A, A_fit))
                r["fit_s"] = fit_s
                r["importance_method"] = ex.importance_result_.method
                if name == reference:  # the same bank under every registered importance estimator
                    U = ex.decomposition_.encode(A_fit)  # importance belongs to the fit, as ex.importance_
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
                            ri.update(_faithfulness(ex, x, A, A_fit, imp))
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
    if reference is not None:
        ref_fit = next((r["fit_s"] for r in rows_out if r["method"] == reference), float("nan"))
        ok = bool(ref_fit) and math.isfinite(ref_fit)
        for r in rows_out:
            r[f"fit_vs_{reference}"] = r["fit_s"] / ref_fit if ok else math.nan
    imp_rows = [_summarise(str(reference), "importance", imp_per_class[e], k=k, importance=e)
                for e in imp_per_class]

    payload: dict[str, Any] = {
        "quick": quick,
        "config": {
            "seed": seed, "n_per_class": n_img, "n_concepts": k, "holdout": HOLDOUT,
            "n_fit_per_class": int(parts[cls_list[0]][0].numel()) if cls_list else 0,
            "n_held_out_per_class": int(parts[cls_list[0]][1].numel()) if cls_list else 0,
            "scored_on": "the held-out images of each class, codes from encode (no KL); *_fit: the fit "
                         "images",
            "classes": [world.class_names[c] for c in cls_list],
            "layer": split.layer, "layer_grid": [h, w], "image_size": S, "thresholds": list(THRESHOLDS),
            "min_presence": MIN_PRESENCE, "methods": names, "estimators": estimators,
            "import_errors": dict(IMPORT_ERRORS),
            "method_params": {n: method_params(n, S, quick) for n in names}, "reference": reference,
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
    return rounded(payload)

