"""Minimal masks measured against saliency baselines at equal area: runs that combine the stages.

Notation: ``x [N,3,H,W]`` normalised images, ``y [N]`` targets, ``masks [N,1,H,W]`` binary minimal masks
(:class:`~conceptlens.attribution.masks.MaskExplainer`), ``s [N,1,H,W]`` a saliency map (occlusion, Grad-CAM;
higher = more important).

Why *equal area*: a saliency map has no size of its own, so each map is cut at the kept fraction of the
mask of the same image (:func:`~conceptlens.metrics.pixels.binarize_at`); then every method keeps the same
number of pixels and the top-1 kept / confidence numbers compare *which* pixels each method picks. The
pixel deletion / insertion AUCs rank the pixels by each method's own map (the binary mask for the masks).

Why the complement and the independent backgrounds: a mask explains when it is sufficient (``m ⊙ x`` keeps
the class) *and* necessary (the complement ``(1 − m) ⊙ x`` loses it); and the masks are *selected* by
"top-1 kept" on the zero background, so that number flatters them. Every method is therefore also judged on
its complement and on two noise backgrounds drawn independently of the masks' search
(:func:`~conceptlens.attribution.masks.losses.independent_backgrounds`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from conceptlens.attribution.baselines import grad_cam, occlusion
from conceptlens.attribution.masks import MaskExplainer, MaskExplanation
from conceptlens.attribution.masks.losses import independent_backgrounds
from conceptlens.errors import ParameterError
from conceptlens.metrics.pixels import binarize_at, check_masks, kept_fraction, pixel_curve, softmax_chunks
from conceptlens.report.base import Section
from conceptlens.report.sections.masks import binarize_baselines, check_section_inputs, mask_section
from conceptlens.split.sites import check_images, forward_chunks, resolve_targets

__all__ = ["compare_at_equal_area", "BASELINES", "MaskComparison", "compare_with_baselines",
           "key_concept_scores", "equal_area_rows", "measured_mask_section", "kept_numbers"]

#: The saliency baselines :func:`compare_with_baselines` knows, in the order they are reported.
BASELINES: tuple[str, ...] = ("occlusion", "grad_cam")
_PER_IMAGE_KEYS = ("top1_kept", "confidence", "complement_top1", "complement_confidence", "independent_top1",
                   "deletion_auc", "insertion_auc")
_BOOL_KEYS = ("top1_kept", "complement_top1")


def compare_at_equal_area(
    model: nn.Module,
    x: torch.Tensor,
    target: Any,
    masks: torch.Tensor,
    saliencies: Mapping[str, torch.Tensor],
    *,
    steps: int = 20,
    batch_size: int = 32,
    seed: int = 0,
    random_baseline: bool = True,
    mask_name: str = "mask",
) -> list[dict[str, Any]]:
    """Compare binary masks with saliency baselines cut at the same kept area, image by image.

    Every saliency map is binarised at each image's kept fraction of ``masks`` (:func:`binarize_at`); then,
    for every method, the top-1 kept rate and the confidence on ``binary * x``, the same two on the
    complement ``(1 − binary) * x`` (necessity: lower is better), the top-1 kept rate on two independent
    noise backgrounds, and the pixel deletion and insertion AUC of the method's own map (the binary mask
    for ``masks``, the continuous saliency for the baselines).

    Parameters
    ----------
    model, x, target
        Classifier, ``[N,3,H,W]`` images, classes (None = top-1 on ``x``).
    masks
        ``[N,1,H,W]`` binary masks (e.g. :attr:`MaskExplanation.masks`).
    saliencies
        ``{name: [N,1,h,w]}`` baseline maps (higher = more important), e.g. occlusion and Grad-CAM.
    steps
        Points of the deletion / insertion curves.
    batch_size
        Images per forward pass.
    seed
        Tie-breaking of the binarisation and the curves; seeds the random row and the independent noise
        backgrounds (:func:`~conceptlens.attribution.masks.losses.independent_backgrounds`: for the
        explainer's own seed they are the draws of :attr:`MaskExplanation.independent_top1`).
    random_baseline
        Add a ``"random"`` row (uniform random saliency, seeded).
    mask_name
        The method name of the masks' row.

    Returns
    -------
    list of dict
        One row per method: ``method``, ``kept_fraction`` (mean), ``top1_kept`` (rate), ``confidence``
        (mean), ``complement_top1`` (rate at which the complement keeps the target, lower = better),
        ``complement_confidence`` (mean), ``independent_top1`` (rate over images and the two independent
        backgrounds), ``deletion_auc`` (mean, lower = better), ``insertion_auc`` (mean, higher = better),
        and the per-image values under the same keys with a ``_per_image`` suffix (lists).
    """
    x = check_images(x)
    masks = check_masks(masks, x)
    logits0 = forward_chunks(model, x, batch_size)
    y = resolve_targets(model, target, logits0)
    frac = kept_fraction(masks)
    maps: dict[str, torch.Tensor] = {mask_name: masks}
    for name, s in saliencies.items():
        maps[name] = check_masks(s, x, f"saliency {name!r}")
    if random_baseline:
        gen = torch.Generator().manual_seed(int(seed) + 7)
        maps["random"] = torch.rand(x.shape[0], 1, *x.shape[-2:], generator=gen).to(x.device, x.dtype)
    rows = []
    for name, s in maps.items():
        binary = masks if name == mask_name else binarize_at(s, frac, seed=seed).to(x.dtype)
        per = kept_numbers(model, x, y, binary, seed=seed, batch_size=batch_size)
        per["deletion_auc"] = pixel_curve(model, x, s, y, steps, False, 0.0, batch_size, seed)[0]
        per["insertion_auc"] = pixel_curve(model, x, s, y, steps, True, 0.0, batch_size, seed)[0]
        row: dict[str, Any] = {"method": name, "kept_fraction": float(kept_fraction(binary).mean())}
        row.update({k: float(v.float().mean()) for k, v in per.items()})
        row["kept_fraction_per_image"] = kept_fraction(binary).tolist()
        row.update({f"{k}_per_image": v.float().tolist() for k, v in per.items()})
        rows.append(row)
    return rows


def kept_numbers(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, binary: torch.Tensor, *, seed: int = 0,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """What the model says on the kept pixels, on their complement and on independent noise backgrounds.

    Parameters
    ----------
    model, x, y
        Classifier, ``[N,3,H,W]`` images, ``[N]`` targets.
    binary
        ``[N,1,H,W]`` binary masks (1 = kept).
    seed
        Seeds the two noise backgrounds
        (:func:`~conceptlens.attribution.masks.losses.independent_backgrounds`).
    batch_size
        Images per forward pass.

    Returns
    -------
    dict
        ``[N]`` tensors: ``top1_kept`` (0 / 1 on ``binary * x``), ``confidence`` (``p_y`` there),
        ``complement_top1`` and ``complement_confidence`` (the same on ``(1 − binary) * x``) and
        ``independent_top1`` (fraction of the two backgrounds ``r`` on which
        ``binary * x + (1 − binary) * r`` keeps ``y`` top-1).
    """
    n = x.shape[0]
    r = independent_backgrounds(x, seed)  # [2,1,3,H,W]
    e = binary * x
    noisy = (e[None] + (1 - binary)[None] * r).reshape(2 * n, *x.shape[1:])
    probs = softmax_chunks(model, torch.cat([e, (1 - binary) * x, noisy]), batch_size)
    pe, pc, pr = probs[:n], probs[n: 2 * n], probs[2 * n:].reshape(2, n, -1)
    return {
        "top1_kept": (pe.argmax(1) == y).float(),
        "confidence": pe.gather(1, y[:, None])[:, 0],
        "complement_top1": (pc.argmax(1) == y).float(),
        "complement_confidence": pc.gather(1, y[:, None])[:, 0],
        "independent_top1": (pr.argmax(2) == y[None]).float().mean(0),
    }


@dataclass(frozen=True)
class MaskComparison:
    """Masks of ``N`` images measured against saliency baselines cut at the same kept area.

    Attributes
    ----------
    explanation : MaskExplanation
        The masks (``masks [N,1,H,W]``).
    saliencies : dict
        ``{baseline: [N,1,H,W]}`` the baselines' continuous maps (higher = more important).
    rows : list of dict
        :func:`compare_at_equal_area` rows (``"mask"``, each baseline, ``"random"``): means and per-image
        lists.
    seconds : dict
        Wall time in seconds for the whole batch: ``"mask"`` (per-image optimisation, or the amortised
        generator's forward pass), ``"mask_training"`` (amortised training; 0 otherwise) and each baseline.
    amortised : bool
        Whether the masks come from the amortised generator.
    cpu_seconds : dict
        The same keys as ``seconds``: CPU time of the process (all threads), less sensitive than wall time
        to other processes on a shared machine.
    """

    explanation: MaskExplanation
    saliencies: dict[str, torch.Tensor]
    rows: list[dict[str, Any]]
    seconds: dict[str, float]
    amortised: bool = False
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def per_image(
        self, names: Sequence[str] | None = None, classes: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One flat dict per image (CSV-ready).

        Keys: ``name``, ``target`` (index), ``target_name``, then for the mask ``kept_fraction``,
        ``top1_kept`` (0/1), ``confidence``, ``complement_top1`` (0/1), ``complement_confidence``,
        ``independent_top1``, ``deletion_auc``, ``insertion_auc``, then the same numbers (not the area,
        which is the mask's) of every other method prefixed with its name, e.g. ``occlusion_top1_kept``.
        """
        e = self.explanation
        n = e.masks.shape[0]
        names = [f"image {i}" for i in range(n)] if names is None else list(names)
        if len(names) != n:
            raise ParameterError(f"got {len(names)} names for {n} images")
        classes = list(classes or [])
        out = []
        for i in range(n):
            t = int(e.target[i])
            d: dict[str, Any] = {"name": names[i], "target": t,
                                 "target_name": classes[t] if 0 <= t < len(classes) else str(t)}
            for row in self.rows:
                pre = "" if row["method"] == "mask" else f"{row['method']}_"
                keys = ("kept_fraction",) if not pre else ()
                for k in (*keys, *_PER_IMAGE_KEYS):
                    v = row.get(f"{k}_per_image", [None] * n)[i]
                    d[pre + k] = None if v is None else int(v) if k in _BOOL_KEYS else float(v)
            out.append(d)
        return out


def compare_with_baselines(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    *,
    explainer: MaskExplainer | None = None,
    amortised: bool = False,
    amortised_steps: int = 200,
    baselines: Sequence[str] = BASELINES,
    occlusion_params: Mapping[str, Any] | None = None,
    grad_cam_layer: str = "auto",
    auc_steps: int = 20,
    seed: int = 0,
    batch_size: int = 32,
) -> MaskComparison:
    """Explain ``x`` with minimal masks and measure them against occlusion and Grad-CAM at equal area.

    Parameters
    ----------
    model
        Classifier ``f(x [N,3,H,W]) -> logits [N,K]``.
    x
        ``[N,3,H,W]`` normalised images.
    target
        Classes (None: the model's top-1; the amortised mode explains the top-1 only).
    explainer
        A configured :class:`MaskExplainer` (default ``MaskExplainer(model, seed=seed)``).
    amortised
        Masks from the amortised generator; when the explainer has none yet it is trained *on ``x``*
        (``amortised_steps`` steps), so the numbers are then on the training images.
    amortised_steps
        Training steps of the amortised generator when it has to be trained here.
    baselines
        Which baselines to compute: names from :data:`BASELINES`.
    occlusion_params
        Keyword arguments of :func:`conceptlens.attribution.baselines.occlusion` (``patch``, ``stride``, …).
    grad_cam_layer
        Layer of :func:`conceptlens.attribution.baselines.grad_cam`.
    auc_steps
        Points of the pixel deletion / insertion curves.
    seed
        Seeds the explainer (when built here) and the tie-breaking and random row of the comparison.
    batch_size
        Images per forward pass of the baselines and metrics.

    Returns
    -------
    MaskComparison
        The masks, the baseline maps ``[N,1,H,W]``, the comparison rows and the wall times.
    """
    x = check_images(x)
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ParameterError(f"unknown baseline(s) {bad}; choose among {', '.join(BASELINES)}")
    ex = MaskExplainer(model, seed=seed) if explainer is None else explainer
    if not isinstance(ex, MaskExplainer):
        raise ParameterError(f"explainer must be a MaskExplainer, got {type(ex).__name__}")
    seconds: dict[str, float] = {"mask_training": 0.0}
    cpu: dict[str, float] = {"mask_training": 0.0}

    @contextlib.contextmanager
    def timed(key: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        seconds[key], cpu[key] = time.perf_counter() - t0, time.process_time() - c0

    if amortised:
        if ex.generator_ is None:
            with timed("mask_training"):
                ex.fit_amortised(x, steps=amortised_steps)
        with timed("mask"):
            ex.masks_amortised(x)  # the generator alone: what a user pays per new image
        expl = ex.explain(x, target, amortised=True)
    else:
        with timed("mask"):
            expl = ex.explain(x, target)
    sal: dict[str, torch.Tensor] = {}
    for b in baselines:
        with timed(b):
            if b == "occlusion":
                sal[b] = occlusion(model, x, expl.target, batch_size=batch_size,
                                   **dict(occlusion_params or {}))
            else:
                sal[b] = grad_cam(model, x, expl.target, grad_cam_layer, batch_size=batch_size)
    rows = compare_at_equal_area(model, x, expl.target, expl.masks, sal, steps=auc_steps,
                                 batch_size=batch_size, seed=seed)
    return MaskComparison(expl, sal, rows, seconds, amortised, cpu)


def key_concept_scores(masks: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """IoU and precision of binary masks against true regions.

    Parameters
    ----------
    masks
        ``[N,1,H,W]`` or ``[N,H,W]`` binary masks (> 0.5 = kept).
    truth
        ``[N,H,W]`` bool true regions (e.g. the key concepts of the predicted class).

    Returns
    -------
    dict
        ``{"iou": [N], "precision": [N]}``: ``|m ∧ t| / |m ∨ t|`` and ``|m ∧ t| / |m|`` (0 when empty).
    """
    m = (masks[:, 0] if masks.ndim == 4 else masks) > 0.5
    if m.shape != truth.shape:
        raise ParameterError(f"masks {list(m.shape)} and truth {list(truth.shape)} differ in shape")
    t = truth.bool()
    inter = (m & t).flatten(1).sum(1).double()
    union = (m | t).flatten(1).sum(1).double()
    size = m.flatten(1).sum(1).double()
    return {"iou": torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)),
            "precision": torch.where(size > 0, inter / size.clamp_min(1), torch.zeros_like(inter))}


# --------------------------------------------------------------------------------------------- report
def equal_area_rows(
    model: nn.Module,
    x: torch.Tensor,
    expl: MaskExplanation,
    baselines: Mapping[str, torch.Tensor] | None,
    *,
    seed: int = 0,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Per-image top-1 kept, confidence and complement numbers of the mask and of each baseline at its area.

    The cheap half of :func:`compare_at_equal_area` (four images per image and method: the kept pixels,
    their complement, two independent noise backgrounds; no AUC): each baseline ``[N,1,h,w]`` is
    binarised exactly as :func:`~conceptlens.report.sections.masks.mask_section` shows it.

    Returns
    -------
    list of dict
        Rows in the format of :func:`compare_at_equal_area` (``method`` and ``<key>_per_image`` lists of
        ``N`` values; the AUC lists hold None), ready for ``mask_section(..., comparison=rows)``.
    """
    masks = expl.masks
    n = x.shape[0]
    frac = masks.float().mean((1, 2, 3))
    none = [None] * n
    binary = {"mask": masks.to(x.dtype), **binarize_baselines(baselines or {}, frac, x, seed)}
    rows = []
    for b, m in binary.items():
        per = kept_numbers(model, x, expl.target, m, seed=seed, batch_size=batch_size)
        rows.append({"method": b, "kept_fraction_per_image": m.mean((1, 2, 3)).tolist(),
                     **{f"{k}_per_image": v.float().tolist() for k, v in per.items()},
                     "deletion_auc_per_image": none, "insertion_auc_per_image": none})
    return rows


def measured_mask_section(
    expl: Any,
    x: torch.Tensor,
    names: Sequence[str] | None = None,
    baselines: Mapping[str, torch.Tensor] | None = None,
    *,
    model: nn.Module | None = None,
    comparison: Sequence[Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> Section:
    """:func:`~conceptlens.report.sections.masks.mask_section` with the numbers measured here.

    Without ``comparison`` rows and with a ``model``, the top-1 kept and confidence of every baseline cut at
    the mask's area are computed (:func:`equal_area_rows`, one forward pass per baseline) and shown; the
    section itself never runs the model. Same arguments as ``mask_section`` (``preset``, ``max_images``,
    ``title`` and ``seed`` pass through).

    Returns
    -------
    Section
        Markup and one PNG strip per image.
    """
    check_section_inputs(expl, x, names, baselines)
    if comparison is None and model is not None and baselines:
        comparison = equal_area_rows(model, x, expl, baselines, seed=kwargs.get("seed", 0))
    return mask_section(expl, x, names, baselines, model=model, comparison=comparison, **kwargs)
