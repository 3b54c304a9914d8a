"""``conceptlens bench masks``: minimal masks against occlusion and Grad-CAM at equal area.

What is measured, and why so:

* **EfficientNet-Lite0 on the 13 sample photos at 224²**, per-image masks with the default settings; the
  baselines are cut at each image's kept area (:func:`conceptlens.workflows.masks.compare_at_equal_area`),
  so the numbers compare *which* pixels each method keeps, not how many. Times are per image, wall and CPU
  (the CPU time is less sensitive to other processes on a shared machine), and as ratios to occlusion
  measured in the same run.
* **The amortised generator** trained on the same photos (numbers on its training images), then applied to
  held-out crops of them (never seen whole in training): it shows what one forward pass buys.
* **The synthetic concept world**, where the truth is known: IoU and precision of the masks, and of the
  baselines at equal area, with the key concepts of the predicted class.
* The issues' targets: ≤ 10 % of the pixels with the class kept on ≥ 90 % of the photos, ≤ 30 s per image,
  ≤ 0.1 s per image amortised (#8); ≤ 5 s per image with a mean kept area ≤ 3 % and the class kept at
  ≤ 10 % on every photo (#24).
* Necessity and an unbiased headline (#20): every method's complement ``(1 − m) ⊙ x`` (does it still keep
  the class?) and its top-1 kept on two noise backgrounds drawn independently of the masks' search.

Results go to ``<out>/masks.json`` and ``<out>/masks.md`` (``bench/results/`` in the repository, with the
ablations behind the defaults in ``bench/results/masks_defaults.md``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from conceptlens._check import fmt
from conceptlens._io import atomic_write
from conceptlens.attribution.baselines import grad_cam, occlusion
from conceptlens.attribution.masks import MaskExplainer
from conceptlens.bench import write_json
from conceptlens.metrics.pixels import binarize_at, confidence, kept_fraction, top1_kept
from conceptlens.report.table import Column, Table
from conceptlens.split.sites import forward_chunks
from conceptlens.workflows.masks import (
    MaskComparison,
    compare_at_equal_area,
    compare_with_baselines,
    key_concept_scores,
)

__all__ = ["benchmark", "benchmark_markdown", "run_benchmark", "FORMER_DEFAULTS"]

#: The per-image defaults before #24 item 1 (necessity term on, both area paths, 100 steps, the model's own
#: batch norms): the peer the default's speed-up is measured against, on the same photos in the same run.
FORMER_DEFAULTS: dict[str, Any] = {"area_mode": "both", "steps": 100, "fold": False}

_BENCH_COLS = ("kept_fraction", "top1_kept", "confidence", "independent_top1", "complement_top1",
               "complement_confidence", "deletion_auc", "insertion_auc")

_MAIN = [Column("method", "method", kind="str"), Column("kept_fraction", "kept (mean)", kind="pct", digits=1),
         Column("kept_max", "kept (max)", kind="pct", digits=1),
         Column("small_and_kept", "≤ 10 % and top-1 kept", kind="pct", digits=1),
         Column("top1_kept", "top-1 kept", kind="pct", digits=1), Column("confidence", "confidence"),
         Column("independent_top1", "top-1 kept, new noise", kind="pct", digits=1),
         Column("complement_top1", "complement keeps top-1 ↓", kind="pct", digits=1),
         Column("complement_confidence", "complement confidence ↓"),
         Column("deletion_auc", "deletion AUC ↓"), Column("insertion_auc", "insertion AUC ↑"),
         Column("seconds_per_image", "s / image (wall)"), Column("ratio_to_occlusion", "× occlusion (wall)"),
         Column("cpu_seconds_per_image", "CPU s / image"),
         Column("cpu_ratio_to_occlusion", "× occlusion (CPU)")]
_HELD = [Column("method", "method", kind="str"), Column("kept_fraction", "kept (mean)", kind="pct", digits=1),
         Column("top1_kept", "top-1 kept", kind="pct", digits=1), Column("confidence", "confidence")]
_WORLD = [Column("method", "method", kind="str"), Column("kept_fraction", "kept", kind="pct", digits=1),
          Column("top1_kept", "top-1 kept", kind="pct", digits=1),
          Column("iou_key", "IoU with key concepts"),
          Column("precision_key", "precision (kept pixels on key concepts)")]


def _summary_rows(cmp: MaskComparison, n: int, label: str) -> list[dict[str, Any]]:
    t_occ = cmp.seconds.get("occlusion")
    c_occ = cmp.cpu_seconds.get("occlusion")
    out = []
    for row in cmp.rows:
        m = row["method"]
        name = f"{label}" if m == "mask" else f"{m} @ equal area"
        secs = cmp.seconds.get(m) if m != "random" else None
        cpu = cmp.cpu_seconds.get(m) if m != "random" else None
        kept = torch.tensor(row["kept_fraction_per_image"])
        top1 = torch.tensor(row["top1_kept_per_image"]) > 0.5
        out.append({
            "method": name,
            **{k: round(float(row[k]), 4) for k in _BENCH_COLS},
            "kept_max": round(float(kept.max()), 4),
            "small_and_kept": round(float(((kept <= 0.10) & top1).float().mean()), 4),
            "seconds_per_image": None if secs is None else round(secs / n, 4),
            "ratio_to_occlusion": None if secs is None or not t_occ else round(secs / t_occ, 4),
            "cpu_seconds_per_image": None if cpu is None else round(cpu / n, 4),
            "cpu_ratio_to_occlusion": None if cpu is None or not c_occ else round(cpu / c_occ, 4),
        })
    return out


def _world_scores(seed: int, n: int, steps: int | None, progress: bool | None) -> dict[str, Any]:
    """Masks and baselines at equal area against the key concepts of the predicted class (synthetic world)."""
    from conceptlens import world as synthetic

    model = synthetic.trained_model(seed=0, progress=progress)
    world = synthetic.ConceptWorld(**model.world_config)
    x, y, true_masks, _ = world.sample(n, seed=seed + 11)
    pred = forward_chunks(model, x, x.shape[0]).argmax(1)
    key = world.key_concepts[pred]  # [n, 2]
    S = x.shape[-1]
    truth = true_masks.gather(1, key[:, :, None, None].expand(-1, -1, S, S)).any(1)  # [n, S, S]
    kw = {} if steps is None else {"steps": steps}
    t0 = time.perf_counter()
    expl = MaskExplainer(model, seed=seed, progress=progress, **kw).explain(x)
    t_mask = time.perf_counter() - t0
    t0 = time.perf_counter()
    occ = occlusion(model, x, pred)
    t_occ = time.perf_counter() - t0
    cam = grad_cam(model, x, pred)
    frac = expl.kept_fraction
    gen = torch.Generator().manual_seed(seed + 7)
    rand = torch.rand(n, 1, S, S, generator=gen)
    maps = {"mask": expl.masks, "occlusion": binarize_at(occ, frac, seed=seed),
            "grad_cam": binarize_at(cam, frac, seed=seed), "random": binarize_at(rand, frac, seed=seed)}
    rows = []
    for name, m in maps.items():
        sc = key_concept_scores(m, truth)
        kept = (forward_chunks(model, m * x, x.shape[0]).argmax(1) == pred).float()
        rows.append({"method": name if name == "mask" else f"{name} @ equal area",
                     "iou_key": round(float(sc["iou"].mean()), 4),
                     "precision_key": round(float(sc["precision"].mean()), 4),
                     "top1_kept": round(float(kept.mean()), 4),
                     "kept_fraction": round(float(m.mean()), 4)})
    return {
        "n_images": n, "image_size": S, "model_accuracy": round(float((pred == y).float().mean()), 4),
        "key_area_fraction": round(float(truth.float().mean()), 4),
        "seconds_per_image_mask": round(t_mask / n, 4), "seconds_per_image_occlusion": round(t_occ / n, 4),
        "rows": rows,
    }


def _amortised(
    model: torch.nn.Module, x: torch.Tensor, per: MaskComparison, *, seed: int, steps: int, auc_steps: int,
    progress: bool | None,
) -> tuple[MaskExplainer, MaskComparison, tuple[float, float]]:
    """The amortised generator trained on ``x``, measured on ``x`` with ``per``'s baseline maps."""
    am_ex = MaskExplainer(model, seed=seed, progress=progress)
    t0, c0 = time.perf_counter(), time.process_time()
    am_ex.fit_amortised(x, steps=steps)
    train = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    am_ex.masks_amortised(x)  # the generator alone: what a user pays per new image
    gen = time.perf_counter() - t0, time.process_time() - c0
    expl = am_ex.explain(x, amortised=True)
    # the baselines' maps do not depend on the area: reuse them, cut at the amortised masks' area
    rows = compare_at_equal_area(model, x, expl.target, expl.masks, per.saliencies, steps=auc_steps,
                                 seed=seed)
    keys = ("occlusion", "grad_cam")
    full = MaskComparison(
        expl, per.saliencies, rows,
        {"mask": gen[0], "mask_training": train[0], **{k: per.seconds[k] for k in keys}}, True,
        {"mask": gen[1], "mask_training": train[1], **{k: per.cpu_seconds[k] for k in keys}})
    return am_ex, full, train


def _held_out(model: torch.nn.Module, am_ex: MaskExplainer, x: torch.Tensor, *, quick: bool,
              seed: int) -> dict[str, Any]:
    """The amortised generator on crops of the photos (it was trained on the whole photos and their flips)."""
    from conceptlens.io.crops import crops

    side = x.shape[-1]
    xc, idx, _ = crops(x, patch_size=round(0.75 * side), stride=round(0.25 * side), out_size=side)
    if quick:
        xc, idx = xc[:2], idx[:2]
    t0 = time.perf_counter()
    mc = am_ex.masks_amortised(xc)
    t_gen = time.perf_counter() - t0
    yc = forward_chunks(model, xc, 32).argmax(1)
    gen = torch.Generator().manual_seed(seed + 7)
    rc = binarize_at(torch.rand(xc.shape[0], 1, side, side, generator=gen), kept_fraction(mc), seed=seed)
    held: dict[str, Any] = {"n_images": int(xc.shape[0]),
                            "crop": f"{round(0.75 * side)} px crops resized to {side}",
                            "seconds_per_image_generator": round(t_gen / xc.shape[0], 5), "rows": []}
    for name, m in (("amortised mask", mc), ("random @ equal area", rc)):
        held["rows"].append({
            "method": name, "kept_fraction": round(float(kept_fraction(m).mean()), 4),
            "top1_kept": round(float(top1_kept(model, xc, m, yc).float().mean()), 4),
            "confidence": round(float(confidence(model, xc, m, yc).mean()), 4),
        })
    return held


def _before_after(model: torch.nn.Module, x: torch.Tensor, names: Sequence[str], *, seed: int,
                  quick: bool, progress: bool | None) -> dict[str, Any]:
    """The former and the current default on the same photos, one after the other in this run.

    Returns ``{"images", "rows": [{"config", "seconds_per_image", "cpu_seconds_per_image", "kept_mean",
    "top1_kept", "complement_keeps", "kept_per_image"}], "speedup_wall", "speedup_cpu"}``.
    """
    rows = []
    for label, params in (("former default", FORMER_DEFAULTS), ("default", {})):
        kw = {**params, "steps": 4} if quick else dict(params)
        ex = MaskExplainer(model, seed=seed, progress=progress, **kw)
        t0, c0 = time.perf_counter(), time.process_time()
        r = ex.explain(x)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = x.shape[0]
        comp = r.complement_top1 if r.complement_top1 is not None else torch.zeros(n, dtype=torch.bool)
        rows.append({"config": label, "params": {k: v for k, v in ex.get_params().items() if k in
                                                 ("steps", "area_mode", "fold", "patience", "frontier")},
                     "seconds_per_image": round(wall / n, 3), "cpu_seconds_per_image": round(cpu / n, 3),
                     "kept_mean": round(float(r.kept_fraction.mean()), 4),
                     "kept_per_image": [round(float(v), 4) for v in r.kept_fraction],
                     "top1_kept": f"{int(r.same_top1.sum())}/{n}",
                     "complement_keeps": f"{int(comp.sum())}/{n}"})
    before, after = rows

    def ratio(key: str) -> float:
        return round(before[key] / max(after[key], 1e-9), 2)

    return {"images": list(names), "rows": rows, "speedup_wall": ratio("seconds_per_image"),
            "speedup_cpu": ratio("cpu_seconds_per_image")}


def _headline(row: Mapping[str, Any], n: int, ba: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The summary's rows (``bench/results/summary.md``): the default configuration first."""
    s = row["seconds_per_image"]
    top1 = round(row["top1_kept"] * n)
    comp = round(row["complement_top1"] * n)
    out = [
        {"what": "masks, default (necessity on): seconds per image (2 cores)", "value": f"{s:.1f} s",
         "target": "≤ 5 s", "met": s <= 5.0},
        {"what": "masks, default: kept area mean / max, class kept, complement keeps the class",
         "value": f"{100 * row['kept_fraction']:.1f} % / {100 * row['kept_max']:.1f} %, "
                  f"{top1}/{n}, {comp}/{n}",
         "target": "≤ 7.9 % / 20.3 %, 13/13, 0/13 (the former default)",
         "met": row["kept_fraction"] <= 0.079 and row["kept_max"] <= 0.203 and top1 == n and comp == 0},
    ]
    if ba is not None:
        out.append({"what": f"masks: former default / default, wall time on the same {len(ba['images'])} "
                            "photos in the same run", "value": f"{ba['speedup_wall']:.2f}×", "target": "≥ 5×",
                    "met": ba["speedup_wall"] >= 5.0})
    return out


def benchmark(
    *, quick: bool = False, seed: int = 0, progress: bool | None = False, verbose: bool = True,
    amortised_steps: int | None = None, explainer_params: Mapping[str, Any] | None = None,
    before_after: int = 2,
) -> dict[str, Any]:
    """The measured comparison of minimal masks with occlusion and Grad-CAM (``conceptlens bench masks``).

    EfficientNet-Lite0 on the 13 sample photos at 224²: per-image masks (default settings), the amortised
    generator trained on the same photos (and applied to held-out crops of them), occlusion and Grad-CAM
    cut at each image's kept area; then the synthetic concept world: IoU and precision of the masks (and
    of the baselines at equal area) with the key concepts of the predicted class.

    Parameters
    ----------
    quick
        Two photos, a few steps, coarse occlusion and short curves (a smoke test under a minute; the
        numbers mean nothing).
    seed
        Seeds every explainer, the tie-breaking and the world's images.
    progress
        Progress bars of the optimisations.
    verbose
        Print the tables.
    amortised_steps
        Training steps of the amortised generator (default 100; 3 in quick mode).
    explainer_params
        Extra :class:`MaskExplainer` arguments of the per-image run (default: none, the default settings).
    before_after
        Photos on which the former default (:data:`FORMER_DEFAULTS`) and the default run one after the
        other, for the speed-up measured in the same run (0: skip).

    Returns
    -------
    dict
        JSON-ready: ``config``, ``rows`` (Lite0 table), ``amortised_rows``, ``held_out``, ``per_image``,
        ``world`` and ``targets`` (the issue's targets, met or not).
    """
    from conceptlens.io import models, sample_images

    model = models.load("efficientnet_lite0")
    x, names = sample_images(model.preset, return_names=True)
    classes = list(model.preset.classes)
    occ_params: dict[str, Any] = {}
    if quick:
        x, names = x[:2], names[:2]
        steps, am_steps, auc_steps, n_world, world_steps = 4, 3, 4, 4, 6
        occ_params = {"patch": 56, "stride": 56}
    else:
        steps, am_steps, auc_steps, n_world, world_steps = 100, 100, 20, 48, None
    amortised_steps = am_steps if amortised_steps is None else amortised_steps
    n = x.shape[0]
    say = print if verbose else (lambda *a, **k: None)
    say(f"bench masks: EfficientNet-Lite0, {n} photos at {x.shape[-1]}², {torch.get_num_threads()} threads")

    per_kw: dict[str, Any] = {"steps": steps, **(explainer_params or {})}
    per_ex = MaskExplainer(model, seed=seed, progress=progress, **per_kw)
    per = compare_with_baselines(model, x, explainer=per_ex, occlusion_params=occ_params, auc_steps=auc_steps,
                                 seed=seed)
    rows = _summary_rows(per, n, "mask (per image)")
    am_ex, am_full, am_train = _amortised(model, x, per, seed=seed, steps=amortised_steps,
                                          auc_steps=auc_steps, progress=progress)
    am_rows = _summary_rows(am_full, n, "amortised mask (trained on these photos)")
    held = _held_out(model, am_ex, x, quick=quick, seed=seed)
    world = _world_scores(seed, n_world, world_steps, progress)

    ba = None
    if before_after:
        k = min(before_after, n)
        ba = _before_after(model, x[:k], names[:k], seed=seed, quick=quick, progress=progress)
    mask_row, am_row = rows[0], am_rows[0]
    targets = {
        "kept_le_10pct_on_top1_ge_90pct": bool(mask_row["small_and_kept"] >= 0.9),
        "per_image_seconds_le_30": bool(mask_row["seconds_per_image"] <= 30),
        "amortised_seconds_le_0.1": bool(am_row["seconds_per_image"] <= 0.1),
        "per_image_seconds_le_5": bool(mask_row["seconds_per_image"] <= 5),
        "kept_mean_le_3pct": bool(mask_row["kept_fraction"] <= 0.03),
        "kept_le_10pct_on_every_photo": bool(mask_row["small_and_kept"] >= 1.0),
    }
    payload: dict[str, Any] = {
        "benchmark": "masks",
        "headline": _headline(mask_row, n, ba),
        "before_after": ba,
        "config": {"model": "efficientnet_lite0", "images": names, "size": int(x.shape[-1]), "quick": quick,
                   "seed": seed, "explainer": per_ex.get_params(), "amortised_steps": amortised_steps,
                   "auc_steps": auc_steps, "occlusion": occ_params or "default (patch H/7, stride patch/2)",
                   "threads": torch.get_num_threads(), "load_average": _loadavg()},
        "rows": rows,
        "amortised_rows": am_rows,
        "amortised_training_seconds": round(am_train[0], 2),
        "amortised_training_cpu_seconds": round(am_train[1], 2),
        "held_out": held,
        "per_image": per.per_image(names, classes),
        "per_image_amortised": am_full.per_image(names, classes),
        "world": world,
        "targets": targets,
    }
    say(benchmark_markdown(payload))
    return payload


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _detail_text(detail: int | None, side: int) -> str:
    if detail == 0:
        return "the U-Net's resolution (detail 0)"
    d = math.ceil(side / 2) if detail is None else detail
    return f"{d}² (detail)"


_BA = [Column("config", "configuration", kind="str"), Column("params", "settings", kind="str"),
       Column("seconds_per_image", "s / image (wall)"), Column("cpu_seconds_per_image", "CPU s / image"),
       Column("kept_mean", "kept (mean)", kind="pct", digits=1),
       Column("top1_kept", "class kept", kind="str"),
       Column("complement_keeps", "complement keeps the class ↓", kind="str")]


def _headline_markdown(payload: Mapping[str, Any]) -> list[str]:
    """The headline (the default configuration) and the before / after table, as Markdown lines."""
    cfg = payload["config"]
    out = [f"### Headline: the default configuration ({cfg['threads']} threads, load average "
           f"{cfg['load_average']})", ""]
    out += [f"- {h['what']}: **{h['value']}** (target {h['target']}: {'met' if h['met'] else 'missed'})"
            for h in payload.get("headline", [])]
    ba = payload.get("before_after")
    if ba:
        rows = [{**r, "params": ", ".join(f"{k} {v}" for k, v in r["params"].items())} for r in ba["rows"]]
        out += ["", f"Before / after on {', '.join(ba['images'])}, one after the other in this run: "
                f"{ba['speedup_wall']}× less wall time, {ba['speedup_cpu']}× less CPU time.", "",
                Table(_BA, rows).markdown(mark_best=False)]
    return out + [""]


def benchmark_markdown(payload: Mapping[str, Any]) -> str:
    """The tables of :func:`benchmark` as Markdown."""
    cfg = payload["config"]
    held = payload["held_out"]
    w = payload["world"]

    def table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
        return Table(columns, rows).markdown(mark_best=False)

    out = _headline_markdown(payload) + [
        f"### Minimal masks on EfficientNet-Lite0 ({len(cfg['images'])} sample photos at {cfg['size']}², "
        f"{cfg['threads']} threads, load average {cfg['load_average']})",
        "",
        f"Per-image masks ({cfg['explainer']['steps']} steps, area_pause "
        f"{'on' if cfg['explainer']['area_pause'] else 'off'}, area_mode "
        f"{cfg['explainer'].get('area_mode', 'penalty')}, mask logits at "
        f"{_detail_text(cfg['explainer'].get('detail'), cfg['size'])}) and the baselines binarised at the "
        "same kept area per image:",
        "",
        table(_MAIN, payload["rows"]),
        "",
        f"Amortised generator, **trained on the same {len(cfg['images'])} photos** "
        f"({cfg['amortised_steps']} steps, {payload['amortised_training_seconds']} s), then one forward pass "
        "per image (the time is the generator's; the baselines cut at its area):",
        "",
        table(_MAIN, payload["amortised_rows"]),
        "",
        f"Held out: {held['n_images']} crops of the photos ({held['crop']}), never seen whole in training; "
        f"generator {held['seconds_per_image_generator']} s / image:",
        "",
        table(_HELD, held["rows"]),
        "",
        f"### Ground-truth world ({w['n_images']} images at {w['image_size']}², model accuracy "
        f"{fmt(w['model_accuracy'], 1, 'pct')}; the key concepts of the predicted class cover "
        f"{fmt(w['key_area_fraction'], 1, 'pct')} of the pixels)",
        "",
        table(_WORLD, w["rows"]),
        "",
        f"Masks {w['seconds_per_image_mask']} s / image, "
        f"occlusion {w['seconds_per_image_occlusion']} s / image.",
        "",
        "Targets (issues #8, #24): " + ", ".join(f"{k}: {'met' if v else 'missed'}"
                                           for k, v in payload["targets"].items()),
    ]
    return "\n".join(out) + "\n"


def run_benchmark(
    quick: bool = False, out: Any = "bench/results", *, seed: int = 0, **kwargs: Any
) -> dict[str, Any]:
    """Run :func:`benchmark` (``kwargs`` passed on) and write ``out/masks.json`` and ``out/masks.md``."""
    payload = benchmark(quick=quick, seed=seed, **kwargs)
    path = write_json(Path(out), "masks", payload)
    md = atomic_write(Path(out) / "masks.md", benchmark_markdown(payload))
    print(f"wrote {path} and {md}")
    return payload
