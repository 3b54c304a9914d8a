"""Activation layouts: how a call site's output is laid out, and the one conversion to channels-last.

Notation: ``x [N,3,H,W]`` the input; a call site's raw output (as the model computes it) is one of

* ``nchw``   ``[N,C,h,w]`` (convolutional networks: ResNet, EfficientNet, ConvNeXt's stages),
* ``nhwc``   ``[N,h,w,C]`` (channels-last networks: Swin's stages, ConvNeXt's head norm),
* ``tokens`` ``[N,T,C]`` with ``T = E + h·w``: ``E`` class / distillation / register tokens first, then the
  patch tokens of an ``h × w`` grid in row-major order (ViT, DeiT, BEiT, Swin's windows of the last stage),
* ``flat``   ``[N,C]``, and ``other`` for anything else (returned as it is).

conceptlens works on channels-last activations ``A [N,h,w,C]``: a spatial or token layer becomes a grid, so
every concept method, the maps and the report see ``h × w`` positions whatever the network. The ``E`` extra
tokens of a token layer are set aside (:func:`to_grid` returns them) and put back in front of the patches by
:func:`from_grid`, unchanged.

A 4-D output is told ``nchw`` from ``nhwc`` by the input's aspect ratio: the spatial pair of a feature map has
the input's ``H / W`` (equal sides for a square input); ties go to ``nchw``. A 3-D output is a token layer
when ``T − E`` is an ``h × w`` grid with the input's aspect ratio (``E`` read from the model when it says:
timm's ``num_prefix_tokens``, Hugging Face's ``cls_token`` / ``distillation_token`` / ``register_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from conceptlens.errors import LayerError

__all__ = ["Layout", "classify", "prefix_tokens", "grid_of", "to_grid", "from_grid"]

#: the most class / register tokens a token layer is assumed to carry when the model does not say
_MAX_EXTRA = 16
_TOKEN_PARAMS = ("cls_token", "dist_token", "distillation_token", "reg_token", "register_tokens")


@dataclass(frozen=True)
class Layout:
    """How one call site lays out its output.

    Attributes
    ----------
    kind : str
        ``"nchw"``, ``"nhwc"``, ``"tokens"``, ``"flat"`` or ``"other"``.
    n_extra : int
        Token layers: the number ``E`` of class / register tokens before the patch tokens (0 otherwise).
    """

    kind: str
    n_extra: int = 0

    @property
    def spatial(self) -> bool:
        """True for layouts that become a ``[N,h,w,C]`` grid."""
        return self.kind in ("nchw", "nhwc", "tokens")


def prefix_tokens(model: nn.Module) -> int | None:
    """The number of class / distillation / register tokens ``model`` puts before its patch tokens, when it
    says (timm's ``num_prefix_tokens``, or the token parameters of Hugging Face / custom ViTs); else None."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    found = 0
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in _TOKEN_PARAMS and p.ndim >= 2:
            found += int(p.shape[-2])
    return found or None


def _grid(n: int, hw: tuple[int, int]) -> tuple[int, int] | None:
    """``(h, w)`` with ``h·w = n`` and the aspect ratio of the input ``hw``, or None."""
    if n < 1:
        return None
    p = math.sqrt(hw[0] * hw[1] / n)
    h, w = max(1, round(hw[0] / p)), max(1, round(hw[1] / p))
    return (h, w) if h * w == n else None


def classify(shape: tuple[int, ...], hw: tuple[int, int], n_extra: int | None) -> Layout:
    """The layout of a call site's raw output.

    Parameters
    ----------
    shape
        The output's shape for a batch of one (``(1, …)``).
    hw
        ``(H, W)`` of the input that produced it.
    n_extra
        The model's class / register token count (:func:`prefix_tokens`), None when unknown.
    """
    if len(shape) == 2:
        return Layout("flat")
    if len(shape) == 4:
        a, b, c = shape[1:]
        target = math.log(hw[0] / hw[1])
        first = abs(math.log(b / c) - target) if b and c else math.inf
        last = abs(math.log(a / b) - target) if a and b else math.inf
        return Layout("nhwc" if last < first else "nchw")
    if len(shape) == 3:
        extras = [n_extra] if n_extra is not None else range(_MAX_EXTRA + 1)
        for e in extras:
            g = _grid(shape[1] - e, hw)
            if g is not None and g[0] * g[1] > 1:
                return Layout("tokens", e)
    return Layout("other")


def grid_of(layout: Layout, n_tokens: int, hw: tuple[int, int], layer: str) -> tuple[int, int]:
    """``(h, w)`` of the patch grid of a token layer with ``n_tokens`` tokens for an ``H × W`` input.

    Raises
    ------
    LayerError
        When ``n_tokens − E`` is no grid with the input's aspect ratio (a token count the layer does not
        explain).
    """
    g = _grid(n_tokens - layout.n_extra, hw)
    if g is None:
        raise LayerError(
            f"layer {layer!r} gave {n_tokens} tokens for a {hw[0]}×{hw[1]} input, which is not "
            f"{layout.n_extra} class/register token(s) plus a grid of patches with the input's aspect ratio; "
            "choose a layer whose output is [N, E + h·w, C] patch tokens (a whole transformer block, see "
            "split.layers()), or one with [N, C, h, w] feature maps"
        )
    return g


def to_grid(raw: torch.Tensor, layout: Layout, hw: tuple[int, int], layer: str
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Channels-last activations and the set-aside extra tokens of a raw output.

    Parameters
    ----------
    raw
        The call site's output ``[N, …]`` for inputs of size ``hw``.

    Returns
    -------
    A, extra
        ``A [N,h,w,C]`` for spatial / token layouts (``[N,C]`` or as-is otherwise); ``extra [N,E,C]`` for
        token layers (None otherwise).
    """
    if layout.kind == "nchw":
        return raw.permute(0, 2, 3, 1), None
    if layout.kind == "tokens":
        h, w = grid_of(layout, raw.shape[1], hw, layer)
        e = layout.n_extra
        return raw[:, e:].reshape(raw.shape[0], h, w, raw.shape[2]), raw[:, :e]
    return raw, None


def from_grid(A: torch.Tensor, layout: Layout, extra: torch.Tensor | None) -> torch.Tensor:
    """The raw layout of channels-last ``A`` (inverse of :func:`to_grid`); ``extra [N,E,C]`` or ``[E,C]``
    (broadcast over the batch) is put back in front of a token layer's patches."""
    if layout.kind == "nchw":
        return A.permute(0, 3, 1, 2).contiguous()
    if layout.kind == "tokens":
        n, c = A.shape[0], A.shape[-1]
        tokens = A.reshape(n, -1, c)
        if layout.n_extra == 0:
            return tokens
        if extra is None:
            raise LayerError("a token layer's class/register tokens are needed to rebuild its output")
        extra = extra.to(tokens.device, tokens.dtype)
        if extra.ndim == 2:
            extra = extra.unsqueeze(0).expand(n, -1, -1)
        return torch.cat([extra, tokens], dim=1)
    return A


def channels_last_shape(shape: tuple[int, ...], layout: Layout, hw: tuple[int, int]) -> tuple[int, ...]:
    """The channels-last shape for one image of a raw output of shape ``shape`` (batch of one included)."""
    s = tuple(shape[1:])
    if layout.kind == "nchw":
        return (s[1], s[2], s[0])
    if layout.kind == "tokens":
        return (*grid_of(layout, s[0], hw, "?"), s[1])
    return s
