"""Minimal binary masks by activation matching (seed 004, arXiv 2509.23051): ``MaskExplainer`` and its result.

A mask explains a decision when the model, shown only the kept pixels (the rest at the dataset mean colour),
still predicts the class; the smaller the mask, the sharper the explanation. Every image gets its own small
U-Net whose binary mask is optimised so that the masked image reproduces the model's activations and output
on the whole image, under an area pressure that grows during the optimisation.

Notation
--------
x
    ``[N,3,H,W]`` images, already normalised for the model ``f`` (logits ``[N,K]``).
y
    ``[N]`` target classes (default: the model's top-1 on ``x``).
z
    ``[N,1,d,d]`` mask logits: the U-Net's logits at its resolution ``s`` (``size``, 28 at 224²),
    upsampled bilinearly to ``d`` (``detail``, 112 at 224²), plus a learned per-image logit map ``[d, d]``.
m
    ``[N,1,H,W]`` the binary mask (1 = kept pixel): the logits upsampled to ``H×W`` and cut at 0 (or at
    the image's budget); ``e = m ⊙ x`` the explanation.

Where the parts live: the generator (:mod:`~conceptlens.attribution.masks.generator`), the objective and its
terms (:mod:`~conceptlens.attribution.masks.losses`), the area schedules, the selection of the smallest
class-keeping mask and the amortised training (:mod:`~conceptlens.attribution.masks.optimise`); the call
sites whose activations are matched come from :mod:`conceptlens.split.sites`, the numbers that judge masks
from :mod:`conceptlens.metrics.pixels`, the comparison with saliency baselines from
:mod:`conceptlens.workflows.masks`.

Defaults: the loss weights are the authors' notebook values. The rest is ours, tuned on
EfficientNet-Lite0 for two CPU cores (the authors: Adam 5e-5, 880 steps on a GPU): Adam lr 0.1, 100 steps,
U-Net logits at ``H/8`` and the mask at ``H/2``, ``init_logit`` 1, ``area_end`` 32 without ``area_pause``,
the penalty area path (with the necessity term on, the budget path found no smaller necessary mask on the
photos measured, for twice the cost; ``area_mode="both"`` was the default until #24), one restart, refined,
on a copy of the model with its batch norms folded. One step costs a forward and backward pass of the model
on ``3N`` images per path (``6N`` with ``area_mode="both"``; the complements of the necessity term are a
third of it). What each choice was measured to do: ``bench/results/masks_defaults.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens._check import check_float, check_int
from conceptlens.attribution.masks.fold import fold_batchnorm
from conceptlens.attribution.masks.generator import GroupedUNet
from conceptlens.attribution.masks.losses import DEFAULT_WEIGHTS, independent_backgrounds, reference
from conceptlens.attribution.masks.optimise import Search, search, train_amortised
from conceptlens.errors import NotFittedError, ParameterError
from conceptlens.split.sites import (
    CallSite,
    activation_sites,
    check_images,
    check_target_length,
    forward_chunks,
    logits_of,
    resolve_layers,
    resolve_targets,
    slice_target,
)

__all__ = ["MaskExplainer", "MaskExplanation", "DEFAULT_WEIGHTS"]

#: The per-image fields of :class:`MaskExplanation` (concatenated over batches).
_PER_IMAGE = ("masks", "kept_fraction", "same_top1", "confidence", "target", "step", "complement_top1",
              "complement_confidence", "independent_top1")


@dataclass(frozen=True)
class MaskExplanation:
    """Binary masks that explain the model's decisions on ``N`` images.

    Attributes
    ----------
    masks : torch.Tensor
        ``[N,1,H,W]`` float, exactly 0 or 1 (1 = kept pixel). The explanation is ``masks * x``.
    kept_fraction : torch.Tensor
        ``[N]`` fraction of pixels kept.
    same_top1 : torch.Tensor
        ``[N]`` bool: the model's top-1 class on ``masks * x`` is the target.
    confidence : torch.Tensor
        ``[N]`` softmax probability of the target on ``masks * x``.
    target : torch.Tensor
        ``[N]`` long, the explained classes.
    history : list of dict
        One dict per optimisation step (mean over images): ``step``, ``loss`` and each weighted term
        (``act``, ``ce``, ``kl``, ``area``, ``bin``, ``tv``, ``abductive``, ``necessity``), ``area_weight``
        (the scheduled ``λ_area``), ``kept`` (binary kept fraction), ``top1`` (fraction of images whose
        current mask keeps the target), ``complement_top1`` (fraction whose complement still keeps it; with
        the necessity term) and ``active`` (fraction of rows still optimised, < 1 only with ``patience``).
        Empty in amortised mode.
    step : torch.Tensor
        ``[N]`` long, the step at which the returned mask was found (-1 in amortised mode).
    complement_top1 : torch.Tensor
        ``[N]`` bool: the model's top-1 on the complement ``(1 − masks) * x`` (the kept pixels removed) is
        still the target, i.e. the mask is *not* necessary (lower is better).
    complement_confidence : torch.Tensor
        ``[N]`` softmax probability of the target on the complement.
    independent_top1 : torch.Tensor
        ``[N]`` fraction of two independent noise backgrounds (one Gaussian, one uniform, drawn from
        ``seed +`` :data:`~conceptlens.attribution.masks.losses.INDEPENDENT_SEED_OFFSET`, never seen by the
        search or its selection) on which ``masks * x + (1 − masks) * r`` keeps the target top-1.
        ``same_top1`` is judged on the zero background the mask was selected on; this is not.
    """

    masks: torch.Tensor
    kept_fraction: torch.Tensor
    same_top1: torch.Tensor
    confidence: torch.Tensor
    target: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    step: torch.Tensor | None = None
    complement_top1: torch.Tensor | None = None
    complement_confidence: torch.Tensor | None = None
    independent_top1: torch.Tensor | None = None

    def explanations(self, x: torch.Tensor) -> torch.Tensor:
        """``masks * x``: ``[N,3,H,W]`` (removed pixels = 0 in normalised space)."""
        return self.masks * x


class MaskExplainer:
    """Minimal binary masks that keep a classifier's decision, by activation matching (seed 004).

    Parameters
    ----------
    model
        Classifier ``f(x [N,3,H,W]) -> logits [N,K]``; switched to eval mode (with a warning) if training.
    layers
        Call sites to match activations at: a list of names (equal weights), a ``{name: α}`` dict, or None
        for the automatic choice (:func:`conceptlens.split.sites.default_layers`). Names are module names
        with ``@i`` for modules that run several times (``"_swish@1"``, ``"layer1.1.relu@1"``); an empty
        list disables the term.
    seed
        Seeds the U-Net initialisation, the noise backgrounds and the amortised minibatches.
    steps
        Optimisation steps per image (per-image mode).
    lr
        Adam learning rate of the U-Net parameters.
    size
        Side ``s`` of the U-Net's logits; default ``ceil(H / 8)`` (28 at 224²).
    detail
        Side ``d`` of the mask logits: the U-Net's logits upsampled to ``d × d`` plus a learned per-image
        logit map there (then upsampled to ``H×W``); default ``ceil(H / 2)`` (112 at 224²), at least
        ``size``. ``detail=size`` gives smoother, larger masks at the U-Net's resolution; ``detail=0``: no
        logit map, the U-Net alone (the authors' generator). Per-image mode only (the amortised generator
        outputs ``size × size``).
    width
        Channels ``c`` of the U-Net (it has ``c, c, 2c, 2c`` encoder channels).
    init_logit
        Initial bias of the output logit; > 0 starts from masks that keep (almost) everything.
    area_end
        Per-image mode: ``λ_area`` grows linearly to ``area_end · λ_area`` over the steps (0: no area prior).
    area_pause
        Penalty path: advance each image's area schedule only on the steps whose mask keeps the target (by
        the ``select`` rule, on this step's backgrounds). Off by default: it gave larger masks on the Lite0
        sample photos.
    area_mode
        How the area is driven down: ``"penalty"`` (the authors' ``λ_area`` term, on our growing schedule),
        ``"budget"`` (the mask keeps exactly the top ``b_i`` fraction of pixels by logit, and ``b_i`` follows
        the class: × (1 − ``budget_rate``) after a step that keeps it, × (1 + ``budget_grow``) after one
        that loses it) or ``"both"`` (one U-Net on each path per image, the smaller class-keeping mask
        wins; twice the cost of one path). Default ``"penalty"``: with the necessity term on, the budget
        path gave larger masks on every photo measured (``masks_defaults.md``).
    budget_start, budget_min
        First and smallest budget (fractions of the pixels).
    budget_rate, budget_grow
        Relative shrink after a class-keeping step, relative growth after a step that lost the class.
    restarts
        U-Nets per image and path, each from its own seeded start (the smallest class-keeping mask over all
        of them wins); the cost grows in proportion.
    patience
        Early stop: an image's path leaves the optimisation once its selected mask has not shrunk by 2 % for
        ``patience`` steps (its U-Net is cut out of the batch, so the remaining steps cost less); None (the
        default) runs every step for every image. Off by default because it costs area: on the espresso
        photo (sufficiency only, both paths) ``patience=20`` stopped both paths near step 63 with 11.2 % of
        the pixels, where the full 100 steps reach 3 % (the penalty path's pressure keeps growing to the
        last step, and its masks shrink again after a plateau).
    refine
        After the optimisation, shrink each image's mask along its own pixel ranking (the top 90 %, 81 %, …
        43 % of its pixels, checked in batched forward passes without gradient) and keep the smallest that
        still keeps the target; about one step's cost.
    batch_size
        Images optimised together (per-image mode; each has its own U-Net) or per minibatch (amortised).
    select
        Which visited mask to return: the smallest that keeps the target top-1 on ``e`` (``"zero"``), or on
        ``e`` and on one draw of each noise background (``"all"``).
    frontier
        What "the mask holds" means for the area schedules (the budget's shrink / growth, the penalty's
        clock with ``area_pause``): ``"class"`` (default) the mask keeps the target; ``"both"`` it also
        leaves a complement that loses it (with the necessity term on).
    fold
        Run the search on a copy of the model with its eval-mode batch norms folded into the convolutions
        before them (:func:`~conceptlens.attribution.masks.fold.fold_batchnorm`; checked against the model
        on the images, else the model itself): the same function, about 18 % less time per step on
        EfficientNet-Lite0. The reported numbers always come from the model itself.
    progress
        Progress bar over steps (None: only on a terminal).
    **weights
        Loss weights, defaults in :data:`DEFAULT_WEIGHTS`: ``act``, ``ce``, ``kl``, ``T``, ``area``, ``bin``,
        ``tv``, ``abductive``, ``necessity`` (the complement ``(1 − m) ⊙ x`` should lose the class; on by
        default, 0 turns it off and the selection back to the smallest class-keeping mask).

    Attributes
    ----------
    weights : dict
        The loss weights in use.
    layers_ : dict
        ``{call site: α}`` resolved at the first call (None before).
    generator_ : nn.Module
        The amortised U-Net after :meth:`fit_amortised` (None before).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | Mapping[str, float] | None = None,
        seed: int = 0,
        *,
        steps: int = 100,
        lr: float = 0.1,
        size: int | None = None,
        detail: int | None = None,
        width: int = 8,
        init_logit: float = 1.0,
        area_end: float = 32.0,
        area_pause: bool = False,
        area_mode: str = "penalty",
        budget_start: float = 1.0,
        budget_min: float = 0.01,
        budget_rate: float = 0.08,
        budget_grow: float = 0.04,
        restarts: int = 1,
        refine: bool = True,
        patience: int | None = None,
        batch_size: int = 8,
        select: str = "zero",
        frontier: str = "class",
        fold: bool = True,
        progress: bool | None = None,
        **weights: float,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model.training:
            warnings.warn("the model was in training mode; switched it to eval mode for mask explanations",
                          stacklevel=2)
            model.eval()
        self.model = model
        self.weights = _check_weights(weights)
        self.layers = layers
        self.seed = check_int("seed", seed, 0)
        self.steps = check_int("steps", steps, 1)
        self.lr = check_float("lr", lr, 0, strict_min=True)
        self.size = None if size is None else check_int("size", size, 2)
        self.detail = detail if detail is None or detail == 0 else check_int("detail", detail, 2)
        self.width = check_int("width", width, 1)
        self.init_logit = check_float("init_logit", init_logit)
        self.area_end = check_float("area_end", area_end, 0)
        self.area_pause = bool(area_pause)
        if area_mode not in ("budget", "penalty", "both"):
            raise ParameterError(f"area_mode must be 'budget', 'penalty' or 'both', got {area_mode!r}")
        self.area_mode = area_mode
        self.budget_start = check_float("budget_start", budget_start, 0, maximum=1, strict_min=True)
        self.budget_min = check_float("budget_min", budget_min, 0, maximum=1, strict_min=True)
        if budget_min > budget_start:
            raise ParameterError(f"budget_min ({budget_min}) must be ≤ budget_start ({budget_start})")
        self.budget_rate = _check_rate("budget_rate", budget_rate)
        self.budget_grow = _check_rate("budget_grow", budget_grow)
        self.restarts = check_int("restarts", restarts, 1)
        self.refine = bool(refine)
        self.patience = None if patience is None else check_int("patience", patience, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if select not in ("all", "zero"):
            raise ParameterError(f"select must be 'all' or 'zero', got {select!r}")
        self.select = select
        if frontier not in ("class", "both"):
            raise ParameterError(f"frontier must be 'class' or 'both', got {frontier!r}")
        self.frontier = frontier
        self.fold = bool(fold)
        self.progress = progress
        self.layers_: dict[str, float] | None = None
        self.generator_: GroupedUNet | None = None
        self._sites: list[CallSite] | None = None
        self._input_shape: tuple[int, ...] | None = None

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (scikit-learn style), loss weights flattened in."""
        return {
            "layers": self.layers, "seed": self.seed, "steps": self.steps, "lr": self.lr, "size": self.size,
            "detail": self.detail, "width": self.width, "init_logit": self.init_logit,
            "area_end": self.area_end, "area_pause": self.area_pause, "area_mode": self.area_mode,
            "budget_start": self.budget_start, "budget_min": self.budget_min, "budget_rate": self.budget_rate,
            "budget_grow": self.budget_grow, "restarts": self.restarts, "refine": self.refine,
            "patience": self.patience, "frontier": self.frontier, "fold": self.fold,
            "batch_size": self.batch_size, "select": self.select, **self.weights,
        }

    # ------------------------------------------------------------------ helpers
    def _mask_size(self, x: torch.Tensor) -> int:
        return self.size if self.size is not None else max(2, math.ceil(x.shape[-1] / 8))

    def _detail(self, x: torch.Tensor) -> int:
        return self.detail if self.detail is not None else max(2, math.ceil(x.shape[-1] / 2))

    def _setup(self, x: torch.Tensor) -> list[CallSite]:
        shape = tuple(x.shape[1:])
        if self._sites is None or self._input_shape != shape:
            sites = activation_sites(self.model, x[:1])
            self.layers_ = resolve_layers(self.layers, sites)
            self._sites = [s for s in sites if s.name in self.layers_]
            self._input_shape = shape
        return self._sites

    def _search(self, x: torch.Tensor, sites: Sequence[CallSite], model: nn.Module) -> Search:
        modes = ("budget", "penalty") if self.area_mode == "both" else (self.area_mode,)
        return Search(
            model=model, sites=sites, layers=self.layers_ or {}, weights=self.weights, seed=self.seed,
            steps=self.steps, lr=self.lr, size=self._mask_size(x), detail=self._detail(x), width=self.width,
            init_logit=self.init_logit, area_end=self.area_end, area_pause=self.area_pause, modes=modes,
            budget_start=self.budget_start, budget_min=self.budget_min, budget_rate=self.budget_rate,
            budget_grow=self.budget_grow, restarts=self.restarts, refine=self.refine, select=self.select,
            batch_size=self.batch_size, progress=self.progress, patience=self.patience,
            frontier=self.frontier,
        )

    def _result(
        self, masks: torch.Tensor, x: torch.Tensor, y: torch.Tensor, history: list[dict[str, float]],
        step: torch.Tensor,
    ) -> MaskExplanation:
        n = x.shape[0]
        e = masks * x
        r = independent_backgrounds(x, self.seed)  # [2,1,3,H,W]
        # one batch: e, the complement, e on each independent background
        noisy = (e[None] + (1 - masks)[None] * r).reshape(2 * n, *x.shape[1:])
        batch = torch.cat([e, (1 - masks) * x, noisy])
        with torch.no_grad():
            logits = forward_chunks(self.model, batch, 4 * self.batch_size)
        le, lc, lr = logits[:n], logits[n: 2 * n], logits[2 * n:].reshape(2, n, -1)
        return MaskExplanation(
            masks=masks,
            kept_fraction=masks.mean((1, 2, 3)),
            same_top1=le.argmax(1) == y,
            confidence=F.softmax(le, 1).gather(1, y[:, None])[:, 0],
            target=y,
            history=history,
            step=step,
            complement_top1=lc.argmax(1) == y,
            complement_confidence=F.softmax(lc, 1).gather(1, y[:, None])[:, 0],
            independent_top1=(lr.argmax(2) == y[None]).float().mean(0),
        )

    # ------------------------------------------------------------------ per-image optimisation
    def explain(
        self, x: torch.Tensor, target: Any = None, *, amortised: bool = False
    ) -> MaskExplanation:
        """Find a minimal binary mask for every image.

        Parameters
        ----------
        x
            ``[N,3,H,W]`` normalised images.
        target
            Class per image: None (the model's top-1), an index or class name for all images, or a
            sequence / ``[N]`` tensor of them.
        amortised
            Use the generator trained by :meth:`fit_amortised` (one forward pass; the target must be the
            top-1, since the generator sees only the image).

        Returns
        -------
        MaskExplanation
            Masks ``[N,1,H,W]`` and their numbers.
        """
        x = check_images(x)
        check_target_length(target, x.shape[0])
        if amortised:
            return self._explain_amortised(x, target)
        sites = self._setup(x)
        # the search runs on a copy with the batch norms folded (checked against the model on these
        # images); the reference outputs and the reported numbers come from the model itself
        fast = fold_batchnorm(self.model, x[: self.batch_size], sites) if self.fold else self.model
        outs = [self._explain_batch(x[i: i + self.batch_size], target, sites, i, fast)
                for i in range(0, x.shape[0], self.batch_size)]
        cat = {k: torch.cat([getattr(o, k) for o in outs]) for k in _PER_IMAGE}
        return MaskExplanation(**cat, history=_merge_histories([o.history for o in outs],
                                                               [o.masks.shape[0] for o in outs]))

    def _explain_batch(
        self, x: torch.Tensor, target: Any, sites: Sequence[CallSite], offset: int, model: nn.Module
    ) -> MaskExplanation:
        ref, logits0 = reference(self.model, x, sites)
        y = resolve_targets(self.model, slice_target(target, offset, x.shape[0]), logits0)
        p_ref = F.softmax(logits0 / self.weights["T"], 1)
        masks, step, history = search(self._search(x, sites, model), x, y, ref, p_ref)
        return self._result(masks, x, y, history, step)

    # ------------------------------------------------------------------ amortised mode
    def fit_amortised(
        self,
        x_train: torch.Tensor,
        steps: int = 200,
        *,
        batch_size: int | None = None,
        lr: float | None = None,
        flip: bool = True,
        area_scale: float = 1.0,
    ) -> MaskExplainer:
        """Train one U-Net over many images (targets = the model's top-1), for one-pass explanations.

        Parameters
        ----------
        x_train
            ``[N,3,H,W]`` normalised training images.
        steps
            Adam steps, each on a seeded random minibatch.
        batch_size
            Minibatch size (default: the explainer's ``batch_size``).
        lr
            Learning rate (default: the explainer's ``lr`` / 5; one shared network needs a gentler step).
        flip
            Random horizontal flips of the minibatch (a cheap augmentation for small training sets).
        area_scale
            ``λ_area`` ramps linearly from 0 to ``area_scale · λ_area`` over the first half of the steps and
            then stays there (no smallest-valid-mask selection is possible for unseen images, so the
            pressure must not grow without bound as in the per-image schedule).

        Returns
        -------
        MaskExplainer
            ``self``, with ``generator_`` and ``history_amortised_`` (list of dicts per step).
        """
        x_train = check_images(x_train)
        check_int("steps", steps, 1)
        bs = check_int("batch_size", min(batch_size or self.batch_size, x_train.shape[0]), 1)
        lr = self.lr / 5 if lr is None else lr
        area_scale = check_float("area_scale", area_scale, 0)
        sites = self._setup(x_train)
        fast = fold_batchnorm(self.model, x_train[:bs], sites) if self.fold else self.model
        self.generator_, self.history_amortised_ = train_amortised(
            fast, sites, self.layers_ or {}, self.weights, x_train, size=self._mask_size(x_train),
            width=self.width, init_logit=self.init_logit, seed=self.seed, steps=steps, batch_size=bs, lr=lr,
            flip=flip, area_scale=area_scale, progress=self.progress,
        )
        return self

    def masks_amortised(self, x: torch.Tensor) -> torch.Tensor:
        """Binary masks ``[N,1,H,W]`` from the amortised generator: one U-Net forward pass, no model call."""
        if self.generator_ is None:
            raise NotFittedError("MaskExplainer.masks_amortised needs a trained generator: call "
                                 ".fit_amortised(x_train) first")
        x = check_images(x)
        with torch.no_grad():
            z = self.generator_(x)
            up = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return (up > 0).to(x.dtype)  # σ(up) > 0.5

    def _explain_amortised(self, x: torch.Tensor, target: Any) -> MaskExplanation:
        masks = self.masks_amortised(x)
        with torch.no_grad():
            logits0 = logits_of(self.model(x))
        y = resolve_targets(self.model, target, logits0)
        if target is not None and bool((y != logits0.argmax(1)).any()):
            raise ParameterError(
                "the amortised generator explains the model's top-1 class (it sees only the image); "
                "use target=None, or explain(x, target, amortised=False) for another class"
            )
        step = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        return self._result(masks, x, y, [], step)

    def __repr__(self) -> str:
        return (f"MaskExplainer({type(self.model).__name__}, layers={self.layers!r}, seed={self.seed}, "
                f"steps={self.steps}, lr={self.lr}, size={self.size})")


def _merge_histories(
    histories: Sequence[list[dict[str, float]]], sizes: Sequence[int]
) -> list[dict[str, float]]:
    """The batches' step logs as one: per step, each number averaged over the batches that ran that step,
    weighted by their images (batches that stopped early drop out of the later steps)."""
    merged = []
    for t in range(max((len(h) for h in histories), default=0)):
        recs = [(h[t], nb) for h, nb in zip(histories, sizes, strict=True) if t < len(h)]
        keys = dict.fromkeys(k for rec, _ in recs for k in rec)
        row: dict[str, float] = {}
        for k in keys:
            have = [(rec[k], nb) for rec, nb in recs if k in rec]
            row[k] = float(t) if k == "step" else sum(v * nb for v, nb in have) / sum(nb for _, nb in have)
        merged.append(row)
    return merged


def _check_weights(weights: Mapping[str, Any]) -> dict[str, float]:
    """The loss weights: :data:`DEFAULT_WEIGHTS` updated with ``weights`` (finite, ≥ 0; ``T`` > 0)."""
    unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ParameterError(
            f"unknown loss weight(s) {unknown}; valid names: {', '.join(DEFAULT_WEIGHTS)}"
        )
    w = dict(DEFAULT_WEIGHTS)
    for k, v in weights.items():
        w[k] = check_float(f"loss weight {k!r}", v, 0)
    if w["T"] <= 0:
        raise ParameterError(f"the KL temperature T must be > 0, got {w['T']}")
    return w


def _check_rate(name: str, v: Any) -> float:
    """A relative step of the budget: a number in [0, 1)."""
    rate = check_float(name, v, 0)
    if rate >= 1:
        raise ParameterError(f"{name} must be a number in [0, 1), got {v!r}")
    return rate
