"""The optimisation of the minimal masks: per-image search along a shrinking area, and amortised training.

Notation as in :mod:`conceptlens.attribution.masks.losses`: ``x [n,3,H,W]``, targets ``y [n]``, the binary
mask ``m`` and the soft mask ``m̃`` of each image's own U-Net (:mod:`conceptlens.attribution.masks.generator`).

Why path following: the authors keep ``λ_area`` constant and take 880 Adam steps at a learning rate 2000×
smaller; starting from masks that keep everything (``init_logit > 0``) and raising the area pressure as the
steps go lets about a hundred steps reach small masks. Two paths do it:

* **penalty**: ``λ_area,i(t) = λ_area · area_end · (c_i(t) + 1) / steps``, where ``c_i(t)`` counts the steps
  so far (with ``area_pause``, only those whose binary mask kept image ``i``'s target: when a mask loses the
  class the pressure stops growing until the other terms have won it back).
* **budget**: image ``i``'s mask is exactly the top ``b_i`` fraction of its pixels by logit (no area
  term); ``b_i`` starts at ``budget_start``, shrinks by ``budget_rate`` after a step that keeps the target
  and grows by ``budget_grow`` after one that loses it, so it hovers at the frontier while the other terms
  reshape the mask.
* **both**: one U-Net on each path for every image in the same batch; per image the smaller class-keeping
  mask wins (neither path wins on every image). ``restarts`` add U-Nets from other seeded starts the same way.

Selection: among the binary masks visited, the smallest one that keeps the target top-1 is returned; with the
necessity term on (``λ_nec > 0``), the smallest one that keeps the target *and whose complement ``(1 − m) ⊙
x`` loses it*, and only when no visited mask does both, the smallest that keeps the target. The constraints
are checked exactly and at no cost, since the forward pass of every step already sees the binary mask and its
complement. ``select="zero"`` checks ``e`` only; ``select="all"`` also requires the target to stay top-1 on
one draw of each noise background (extra forward passes without gradient, for the candidates only, from a
generator of their own so that the trajectory does not depend on ``select``). When no visited mask qualifies,
the last one is returned. ``refine`` then shrinks each found mask along its own pixel ranking (the top
``0.9^j`` of its pixels, ``j = 1…8``) while the target holds (and, for a mask whose complement lost the
target, while the complement still loses it), for about one step's cost.

One step costs a forward and backward pass of the model on ``3n`` images per path (the explanation, its
noise composite and its complement; ``2n`` without the necessity term). Measured effects of each choice:
``bench/results/masks_defaults.md``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens.attribution.masks.generator import GroupedUNet, take_groups
from conceptlens.attribution.masks.losses import mask_loss, noise_background, reference
from conceptlens.attribution.masks.parallel import SplitForward
from conceptlens.progress import progress_bar
from conceptlens.split.sites import CallSite, forward_chunks, logits_of

__all__ = ["Search", "SETTLE", "frozen", "search", "refine", "selection_key", "survives_noise",
           "train_amortised"]


@dataclass(frozen=True)
class Search:
    """The settings of a per-image search (see :class:`~conceptlens.attribution.masks.MaskExplainer`)."""

    model: nn.Module
    sites: Sequence[CallSite]
    layers: Mapping[str, float]
    weights: Mapping[str, float]
    seed: int
    steps: int
    lr: float
    size: int  # side s of the U-Net's logits
    detail: int  # side d of the mask logits (0: no logit map, the U-Net alone)
    width: int
    init_logit: float
    area_end: float
    area_pause: bool
    modes: tuple[str, ...]  # "budget" and / or "penalty"
    budget_start: float
    budget_min: float
    budget_rate: float
    budget_grow: float
    restarts: int
    refine: bool
    select: str
    batch_size: int
    progress: bool | None
    patience: int | None = None  # stop a row after this many steps without a 2 % smaller selected mask
    frontier: str = "class"  # what "holds" means for the schedules: "class" kept, or "both" (and necessary)


#: A row's selected mask must shrink by this relative amount to count as progress for ``patience``.
SETTLE = 0.02


@dataclass
class _Best:
    """The search's state per U-Net row: best class-keeping mask so far, schedule clocks, budgets."""

    mask: torch.Tensor  # [n,1,H,W]
    area: torch.Tensor  # [n], inf: none found yet
    key: torch.Tensor  # [n] selection key: area, + 2 when the complement keeps the target (inf: none yet)
    step: torch.Tensor  # [n] long, -1: none found yet
    rank: torch.Tensor | None  # [n,1,H,W] the ranking the best mask was cut from (refine only)
    last: torch.Tensor  # [n,1,H,W] the last binary mask
    clock: torch.Tensor  # [n] steps counted by the area schedule
    budget: torch.Tensor | None  # [n] kept fractions (NaN on penalised rows), None without budget rows
    improved: torch.Tensor  # [n] long, the last step whose selected mask was SETTLE smaller than before


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients during the optimisation (faster backward, no stray .grad)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def search(
    s: Search, x: torch.Tensor, y: torch.Tensor, ref: dict[str, torch.Tensor], p_ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]]]:
    """Minimal binary masks of ``x [n0,3,H,W]`` for targets ``y [n0]``, one U-Net per image and path.

    ``ref`` and ``p_ref [n0,K]`` are the reference outputs and tempered softmax of ``x`` (see
    :func:`~conceptlens.attribution.masks.losses.mask_loss`). With ``s.patience``, a row (an image on one
    path) leaves the batch once its selected mask has not shrunk by :data:`SETTLE` (2 %) for ``patience``
    steps: its U-Net and optimiser state are cut out (:meth:`GroupedUNet.select`), the other rows go on
    unchanged, and the loop ends when no row is left.

    Returns
    -------
    tuple
        ``masks [n0,1,H,W]`` (0 / 1), ``step [n0]`` (the step each was found at, -1 when none kept the
        target) and the history (one dict per step run, means over the rows still optimised; ``active``
        is their fraction).
    """
    n0 = x.shape[0]
    paths = [(m, j) for j in range(s.restarts) for m in s.modes]
    r = len(paths)
    if r > 1:
        x, y, p_ref = x.repeat(r, 1, 1, 1), y.repeat(r), p_ref.repeat(r, 1)
        ref = {k: v.repeat(r, *([1] * (v.ndim - 1))) for k, v in ref.items()}
    n = x.shape[0]
    budgeted = torch.tensor([m == "budget" for m, _ in paths for _ in range(n0)], device=x.device)
    seeds = [s.seed + 7919 * j for _, j in paths for _ in range(n0)]
    net = GroupedUNet(s.size, s.width, n, s.init_logit, seeds, free=s.detail > 0, detail=s.detail or None)
    net = net.to(x.device, x.dtype)
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    noise_gen = torch.Generator().manual_seed(s.seed + 1)
    check_gen = torch.Generator().manual_seed(s.seed + 3)  # own stream: same trajectory for any select
    use_abd = s.weights["abductive"] > 0
    ones = torch.ones(n, 1, *x.shape[2:], device=x.device, dtype=x.dtype)
    st = _Best(
        mask=ones.clone(), area=torch.full((n,), math.inf, device=x.device),
        key=torch.full((n,), math.inf, device=x.device),
        step=torch.full((n,), -1, dtype=torch.long, device=x.device),
        rank=torch.zeros_like(ones) if s.refine else None, last=ones.clone(),
        clock=torch.zeros(n, device=x.device, dtype=x.dtype),
        budget=torch.where(budgeted, s.budget_start, math.nan).to(x.dtype) if bool(budgeted.any()) else None,
        improved=torch.zeros(n, dtype=torch.long, device=x.device),
    )
    rows = torch.arange(n, device=x.device)  # the rows still optimised
    xa, ya, refa, p_refa = x, y, ref, p_ref
    history: list[dict[str, float]] = []
    with frozen(s.model), SplitForward(s.model, s.sites) as fw:
        for step in progress_bar(range(s.steps), desc="mask steps", enable=s.progress):
            noise = noise_background(step, x, noise_gen) if use_abd else None
            area_w = s.weights["area"] * s.area_end * (st.clock[rows] + 1) / s.steps
            budget = None if st.budget is None else st.budget[rows]
            loss, terms, hard, out, rank = mask_loss(
                s.model, net, xa, ya, refa, p_refa, s.sites, s.layers, s.weights, area_w, noise, budget, fw
            )
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            holds = _keep_if_smaller(s, st, rows, step, hard, out, rank, xa, ya, noise, check_gen)
            rec = {"step": float(step), "loss": float(loss.detach().mean()),
                   "area_weight": float(area_w.mean()), "active": rows.numel() / n}
            _advance(s, st, rows, holds, budgeted, rec)
            rec.update({k: float(v.detach().mean()) for k, v in terms.items()})
            rec["kept"] = float(hard.mean((1, 2, 3)).mean())
            rec["top1"] = float((out["e"].argmax(1) == ya).float().mean())
            if "complement" in out:
                rec["complement_top1"] = float((out["complement"].argmax(1) == ya).float().mean())
            history.append(rec)
            if s.patience is None:
                continue
            go_on = (step - st.improved[rows]) < s.patience
            if not bool(go_on.all()):
                if not bool(go_on.any()):
                    break
                keep = go_on.nonzero()[:, 0]
                rows = rows[keep]
                net, opt = _select_rows(net, opt, keep, s.lr)
                xa, ya, p_refa = xa[keep], ya[keep], p_refa[keep]
                refa = {k: v[keep] for k, v in refa.items()}
        found = torch.isfinite(st.key)
        if st.rank is not None and bool(found.any()):
            st.mask, st.area, st.key = refine(s, x, y, st.mask, st.key, st.rank, fw)
    masks = torch.where(found[:, None, None, None], st.mask, st.last)
    if r == 1:
        return masks, st.step, history
    # per image, the smallest class-keeping mask over the paths (the first path's last mask if none);
    # argmin takes the first of equal areas, so a restart never displaces an equal first-path mask
    pick = st.key.reshape(r, n0).argmin(0)
    rows = pick * n0 + torch.arange(n0, device=x.device)
    return masks[rows], st.step[rows], history


def _select_rows(
    net: GroupedUNet, opt: torch.optim.Optimizer, keep: torch.Tensor, lr: float
) -> tuple[GroupedUNet, torch.optim.Optimizer]:
    """The generators ``keep`` and a new Adam carrying their state (moments cut the same way, same step)."""
    new = net.select(keep)
    new_opt = torch.optim.Adam(new.parameters(), lr=lr)
    old = dict(net.named_parameters())
    for name, p in new.named_parameters():
        state = opt.state.get(old[name])
        if state:
            new_opt.state[p] = {k: v.clone() if k == "step" else take_groups(v, net.groups, keep)
                                for k, v in state.items()}
    return new, new_opt


def _keep_if_smaller(
    s: Search, st: _Best, rows: torch.Tensor, step: int, hard: torch.Tensor, out: dict[str, torch.Tensor],
    rank: torch.Tensor, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None,
    check_gen: torch.Generator,
) -> torch.Tensor:
    """Keep this step's binary masks where they are the smallest class-keeping ones so far.

    ``rows [r]`` are the rows of the state ``st`` that this step optimised (``hard``, ``out``, ``rank``,
    ``x`` and ``y`` hold those rows only). The forward pass saw the binary mask: a mask qualifies when it
    keeps the target top-1 on the zero background (and with ``select="all"`` also on this step's noise
    background and one draw of the other kind). With the necessity term on, a mask whose complement loses
    the target beats every mask whose complement keeps it (the selection key adds 2 to the area of the
    latter). Returns ``[r]`` bool: whether the mask holds the class by the ``select`` rule (for the
    schedule).
    """
    area = hard.mean((1, 2, 3))
    kept_zero = out["e"].argmax(1) == y
    kept_noise = out["noise"].argmax(1) == y if noise is not None else kept_zero
    key = selection_key(area, out.get("complement"), y)
    best = st.key[rows]
    ok = kept_zero & (key < best)
    if s.select == "all":
        # the step saw one noise kind (or none): check the candidates on the missing kind(s)
        kinds = [step + 1] if noise is not None else [0, 1]
        ok = survives_noise(s.model, ok & kept_noise, kinds, hard, x, y, check_gen)
    # progress for patience: a necessary mask after unnecessary ones, or a mask SETTLE smaller in its group
    gain = ok & ((key < best - 1) | (area < st.area[rows] * (1 - SETTLE)))
    st.improved[rows] = torch.where(gain, step, st.improved[rows])
    okb = ok[:, None, None, None]
    st.mask[rows] = torch.where(okb, hard, st.mask[rows])
    if st.rank is not None:
        st.rank[rows] = torch.where(okb, rank, st.rank[rows])
    st.area[rows] = torch.where(ok, area, st.area[rows])
    st.key[rows] = torch.where(ok, key, best)
    st.step[rows] = torch.where(ok, step, st.step[rows])
    st.last[rows] = hard
    holds = kept_zero & kept_noise if s.select == "all" else kept_zero
    if s.frontier == "both" and "complement" in out:
        holds = holds & (out["complement"].argmax(1) != y)
    return holds


def _advance(
    s: Search, st: _Best, rows: torch.Tensor, holds: torch.Tensor, budgeted: torch.Tensor,
    rec: dict[str, float],
) -> None:
    """Move the area schedules of ``rows`` one step: the penalty's clock, the budgets along the frontier."""
    st.clock[rows] = st.clock[rows] + (holds.to(st.clock.dtype) if s.area_pause else 1.0)
    if st.budget is not None:
        # path following on the area itself: shrink the budget while the mask keeps the class,
        # let it grow back slowly while the other terms win the class back
        b = st.budget[rows]
        shrunk = (b * (1 - s.budget_rate)).clamp_min(s.budget_min)
        grown = (b * (1 + s.budget_grow)).clamp_max(1.0)
        st.budget[rows] = torch.where(holds, shrunk, grown)
        on = budgeted[rows]
        if bool(on.any()):
            rec["budget"] = float(st.budget[rows][on].mean())


def selection_key(area: torch.Tensor, complement: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """``[n]`` the key the search minimises over class-keeping masks of areas ``area [n]``.

    The area itself, plus 2 where the complement's logits ``complement [n,K]`` still give ``y`` top-1
    (None: the necessity term is off, the key is the area): a mask whose complement loses the class always
    beats one whose complement keeps it, and within each group the smaller mask wins.
    """
    if complement is None:
        return area
    return area + 2.0 * (complement.argmax(1) == y).to(area.dtype)


def refine(
    s: Search, x: torch.Tensor, y: torch.Tensor, best: torch.Tensor, best_key: torch.Tensor,
    rank: torch.Tensor, forward: SplitForward | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shrink each found mask along its own pixel ranking while the target stays top-1.

    ``best [n,1,H,W]`` masks with selection keys ``best_key [n]`` (:func:`selection_key`; inf: none found)
    and ``rank [n,1,H,W]`` the logits they were cut from. Candidates: the top ``0.9^j`` of each mask's
    pixels, ``j = 1…8``, all checked in batched forward passes without gradient (on the zero background, or
    with ``select="all"`` also on one draw of each noise background; with the necessity term on, their
    complements too); the candidate of smallest key that keeps the target replaces the mask when its key is
    smaller (so a mask whose complement lost the class is only shrunk while the complement still loses
    it). ``forward`` runs the passes (None: the plain model). Returns the new ``(best, area, key)``.
    """
    idx = torch.isfinite(best_key).nonzero()[:, 0]
    flat = rank[idx].reshape(idx.numel(), -1)
    inside = best[idx].reshape(idx.numel(), -1)
    kept_px = inside.sum(1)
    # rank the mask's own pixels (the others last): candidate j keeps its ceil(0.9^j · kept) best ones
    order = flat.masked_fill(inside == 0, -math.inf).argsort(1, descending=True)
    pos = torch.empty_like(order)
    pos.scatter_(1, order, torch.arange(flat.shape[1], device=x.device).expand_as(order))
    fracs = [0.9 ** j for j in range(1, 9)]
    cands = torch.stack([(pos < (kept_px * f).ceil()[:, None]).to(x.dtype) for f in fracs], 1)
    cands = cands.reshape(idx.numel() * len(fracs), 1, *x.shape[2:])
    xi = x[idx].repeat_interleave(len(fracs), 0)
    yi = y[idx].repeat_interleave(len(fracs), 0)
    chunk = max(s.batch_size, 1) * 4
    def logits(z: torch.Tensor) -> torch.Tensor:
        return forward_chunks(s.model, z, chunk) if forward is None else forward.logits(z, chunk)

    with torch.no_grad():
        pred = logits(cands * xi).argmax(1)
        comp = logits((1 - cands) * xi) if s.weights["necessity"] > 0 else None
    keeps = pred == yi
    if s.select == "all":
        gen = torch.Generator().manual_seed(s.seed + 5)
        keeps = survives_noise(s.model, keeps, [0, 1], cands, xi, yi, gen)
    keys = selection_key(cands.mean((1, 2, 3)), comp, yi)
    keys = torch.where(keeps, keys, math.inf).reshape(idx.numel(), len(fracs))
    cand_key, pick = keys.min(1)
    better = cand_key < best_key[idx]
    area = torch.where(torch.isfinite(best_key), best.mean((1, 2, 3)), math.inf)
    if bool(better.any()):
        rows = idx[better]
        cands = cands.reshape(idx.numel(), len(fracs), 1, *x.shape[2:])
        new = cands[better.nonzero()[:, 0], pick[better]]
        best = best.clone()
        best[rows] = new
        area[rows] = new.mean((1, 2, 3))
        best_key = best_key.clone()
        best_key[rows] = cand_key[better]
    return best, area, best_key


def survives_noise(
    model: nn.Module, cand: torch.Tensor, kinds: list[int], hard: torch.Tensor, x: torch.Tensor,
    y: torch.Tensor, gen: torch.Generator,
) -> torch.Tensor:
    """``cand [n]`` restricted to the images whose mask ``hard [n,1,H,W]`` keeps the target on noise.

    ``kinds``: one draw per entry, even = Gaussian, odd = uniform. Forward passes without gradient, on the
    candidates only.
    """
    out = cand.clone()
    for kind in kinds:
        idx = out.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        r = noise_background(kind, x, gen)
        m = hard[idx]
        with torch.no_grad():
            pred = logits_of(model(m * x[idx] + (1 - m) * r)).argmax(1)
        out[idx] = pred == y[idx]
    return out


def train_amortised(
    model: nn.Module, sites: Sequence[CallSite], layers: Mapping[str, float], weights: Mapping[str, float],
    x_train: torch.Tensor, *, size: int, width: int, init_logit: float, seed: int, steps: int,
    batch_size: int, lr: float, flip: bool, area_scale: float, progress: bool | None,
) -> tuple[GroupedUNet, list[dict[str, float]]]:
    """One U-Net trained over ``x_train [N,3,H,W]`` (targets = the model's top-1) on seeded minibatches.

    ``λ_area`` ramps linearly from 0 to ``area_scale · λ_area`` over the first half of the steps, then stays
    (no smallest-valid-mask selection is possible for unseen images). Returns the frozen generator (logits
    ``[N,1,size,size]``) and the history (one dict per step).
    """
    net = GroupedUNet(size, width, 1, init_logit, seed).to(x_train.device, x_train.dtype)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 2)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    y_all = forward_chunks(model, x_train, 64).argmax(1)
    use_abd = weights["abductive"] > 0
    history: list[dict[str, float]] = []
    with frozen(model):
        for step in progress_bar(range(steps), desc="amortised mask steps", enable=progress):
            idx = torch.randperm(x_train.shape[0], generator=gen)[:batch_size].to(x_train.device)
            xb = x_train[idx]
            if flip:
                f = (torch.rand(batch_size, generator=gen) < 0.5).to(x_train.device)
                xb = torch.where(f[:, None, None, None], xb.flip(-1), xb)
            ref, logits0 = reference(model, xb, sites)
            yb = logits0.argmax(1) if flip else y_all[idx]
            p_ref = F.softmax(logits0 / weights["T"], 1)
            noise = noise_background(step, xb, noise_gen) if use_abd else None
            area_w = weights["area"] * area_scale * min(1.0, 2 * (step + 1) / steps)
            loss, terms, hard, out, _ = mask_loss(model, net, xb, yb, ref, p_ref, sites, layers, weights,
                                                  area_w, noise)
            opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            opt.step()
            rec: dict[str, Any] = {"step": float(step), "loss": float(loss.detach().mean())}
            rec.update({k: float(v.detach().mean()) for k, v in terms.items()})
            rec["kept"] = float(hard.mean())
            rec["top1"] = float((out["e"].argmax(1) == yb).float().mean())
            history.append(rec)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, history
