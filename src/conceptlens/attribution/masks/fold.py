"""A copy of the model with its eval-mode batch norms folded into the convolutions before them.

Why: the mask search runs the frozen model forward and backward on ``3n`` images per step, and an eval-mode
``BatchNorm2d`` after a convolution is an affine map per channel that costs a pass over the activations both
ways (about 12 % of a Lite0 step on CPU). Folded, ``conv → bn`` becomes one convolution with weights
``w' = w · γ / √(σ² + ε)`` (per output channel) and bias ``b' = (b − μ) · γ / √(σ² + ε) + β``.

A symmetric zero padding that a TensorFlow-style "same" convolution runs as a module of its own is moved into
the convolution as well (one copy of the activations less each way).

Which pairs are folded is read from one forward pass, not from module names: a convolution is folded into a
batch norm when the batch norm's input *is* the convolution's output tensor and each module runs exactly
once. That cannot tell whether the convolution's output is also used elsewhere, so the folded copy is checked
against the model on the images themselves (logits and every matched call site's output); when they differ by
more than a float32 rounding margin, the model itself is used, unfolded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from conceptlens.split.sites import CallSite, capture, forward_hooks, logits_of

__all__ = ["fold_batchnorm", "conv_bn_pairs"]


def conv_bn_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """``[(conv name, batch norm name)]``: the ``Conv2d → BatchNorm2d`` pairs in one forward pass of ``x``.

    A pair counts when the batch norm's input is the convolution's output tensor itself and both modules run
    once per forward pass (a module called twice could meet a different partner the second time).
    """
    mods = dict(model.named_modules())
    convs = {k: m for k, m in mods.items() if isinstance(m, nn.Conv2d)}
    bns = {k: m for k, m in mods.items() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
           and m.running_var is not None}
    calls: dict[str, int] = {}
    last_out: dict[int, tuple[str, torch.Tensor]] = {}
    seen: list[tuple[str, str]] = []

    def on_conv(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                last_out[id(out)] = (name, out)
        return hook

    def on_bn(name: str) -> Any:
        def hook(_m: nn.Module, inp: Any, _o: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            t = inp[0] if inp else None
            rec = last_out.get(id(t)) if isinstance(t, torch.Tensor) else None
            if rec is not None and rec[1] is t:
                seen.append((rec[0], name))
        return hook

    hooks = [(m, on_conv(k)) for k, m in convs.items()] + [(m, on_bn(k)) for k, m in bns.items()]
    with torch.no_grad(), forward_hooks(hooks):
        model(x)
    return [(c, b) for c, b in seen if calls.get(c) == 1 and calls.get(b) == 1]


def fold_batchnorm(
    model: nn.Module, x: torch.Tensor, sites: Sequence[CallSite] = (), rtol: float = 1e-4
) -> nn.Module:
    """The model with every eval-mode ``Conv2d → BatchNorm2d`` pair folded into one convolution.

    Parameters
    ----------
    model
        A classifier in eval mode (a model in training mode, or one without such pairs, is returned as is).
    x
        ``[n,3,H,W]`` images the folded copy is checked on (one forward pass of each model).
    sites
        Call sites whose outputs must also agree (the activations the masks match).
    rtol
        Largest allowed difference, relative to the largest absolute value of each compared output.

    Returns
    -------
    nn.Module
        A folded deep copy (batch norms replaced by ``nn.Identity``, parameters frozen), or ``model`` itself
        when nothing could be folded or the copy's outputs differ.
    """
    if model.training:
        return model
    pairs = conv_bn_pairs(model, x[:1])
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    mods = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue  # conv_bn_pairs names only such pairs; this keeps the types narrow
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)  # type: ignore[operator]
            if bn.weight is not None:
                scale = scale * bn.weight
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            shift = (bias - bn.running_mean) * scale  # type: ignore[operator]
            if bn.bias is not None:
                shift = shift + bn.bias
            conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift.detach().clone())
        parent, _, child = bn_name.rpartition(".")
        setattr(mods[parent] if parent else folded, child, nn.Identity())
    _pad_inside(folded)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded if _agree(model, folded, x, sites, rtol) else model


def _pad_inside(model: nn.Module) -> None:
    """Move a symmetric zero padding module run before a convolution into the convolution itself.

    TensorFlow-style "same" convolutions (``Conv2dStaticSamePadding`` of the EfficientNet ports) pad with a
    ``static_padding`` child and convolve without padding: one more copy of the activations each way. Where
    that padding is symmetric, the convolution's own ``padding`` does the same without the copy (the caller
    checks the result against the model).
    """
    for conv in model.modules():
        pad = getattr(conv, "static_padding", None)
        if not (isinstance(conv, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)):
            continue
        left, right, top, bottom = pad.padding
        if left == right and top == bottom and tuple(conv.padding) == (0, 0) and conv.padding_mode == "zeros":
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


def _agree(a: nn.Module, b: nn.Module, x: torch.Tensor, sites: Sequence[CallSite], rtol: float) -> bool:
    """Whether ``a`` and ``b`` give the same logits and call-site outputs on ``x`` (to ``rtol``)."""
    with torch.no_grad(), capture(a, sites) as acts_a:
        la = logits_of(a(x))
    with torch.no_grad(), capture(b, sites) as acts_b:
        lb = logits_of(b(x))
    pairs = [(la, lb)] + [(acts_a[k], acts_b.get(k)) for k in acts_a]
    for u, v in pairs:
        if v is None or u.shape != v.shape:
            return False
        if float((u - v).abs().max()) > rtol * max(float(u.abs().max()), 1e-12):
            return False
    return True
