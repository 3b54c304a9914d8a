"""``layer="auto"``: where to cut a classifier, for convolutional networks and transformers alike.

* **Convolutional networks** (the last grid is a ``[N,C,h,w]`` feature map: ResNet, EfficientNet, ConvNeXt):
  the last spatial call site (``h·w > 1``) before global pooling, i.e. after the head's activation, where a
  ReLU-like network's activations are ≥ 0 (EfficientNet-Lite0's ``_swish@1``, ResNet's ``layer4``).
* **Transformers and channels-last networks** (the last grid is a token layer ``[N, E + h·w, C]`` or a
  ``[N,h,w,C]`` map: ViT, DeiT, BEiT, Swin): the output of the last *whole block* (a child of a
  ``Sequential`` / ``ModuleList``: ``blocks.11``, ``layers.3``) whose patch tokens reach the logits. A ViT
  that classifies from its class token reads no patch token after the last block, so there it is the last
  block's input (the previous block's output), where the last attention still mixes patches into the class
  token. These activations are signed: NMF-like methods (ICE / NMF, CRAFT, FACE) refuse them, PCA, k-means and
  EDDP take them, and ``ModelSplit(..., signed="split")`` gives NMF-like methods an exact non-negative view
  (``[max(A, 0), max(−A, 0)]``). (A post-GELU MLP layer is not a clean cut: the block's residual stream skips
  over it, so ``h`` would need the residual of each image as well.)

The choice is explained in ``split.auto_note``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from conceptlens.errors import ConceptLensError, LayerError

__all__ = ["block_names", "choose"]


def block_names(model: nn.Module) -> set[str]:
    """Dotted names of the whole blocks: children of a ``Sequential`` or ``ModuleList`` that is not itself
    inside a block (``blocks.3``, ``layers.2``; not a block's own ``mlp.0``)."""
    out: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)) and not any(
                name.startswith(b + ".") or name == b for b in out):
            out.update(f"{name}.{child}" if name else child for child, _ in mod.named_children())
    return out


def choose(sites: Sequence[Any], model: nn.Module, try_site: Callable[[Any], bool]) -> tuple[Any, str]:
    """The automatic site and a sentence saying why.

    Parameters
    ----------
    sites
        The split's call sites in execution order, each with ``name``, ``aliases`` and ``layout``.
    model
        The classifier (for its block structure).
    try_site
        ``try_site(site)`` builds the split there and returns True when the patch positions reach the
        logits; it raises :class:`ConceptLensError` when the site cannot be cut.

    Raises
    ------
    LayerError
        When no site has a spatial or token grid, or no transformer block can be cut.
    """
    grids = [s for s in sites if s.layout.spatial and _positions(s) > 1]
    if not grids:
        raise LayerError("layer='auto' found no spatial layer ([N,C,h,w] maps or [N,T,C] patch tokens with "
                         "h·w > 1); name a layer (see split.layers())")
    last = grids[-1]
    if last.layout.kind == "nchw":
        return last, f"layer='auto' chose {last.name!r}, the last convolutional feature map before pooling"
    blocks = block_names(model)
    kind = last.layout.kind
    candidates = [s for s in grids if s.layout.kind == kind and any(
        n.split("@")[0] in blocks for n in (s.name, *s.aliases))] or [last]
    skipped: list[str] = []
    for s in reversed(candidates):
        try:
            if try_site(s):
                what = "patch tokens" if kind == "tokens" else "channels-last feature map"
                why = (f" ({', '.join(map(repr, skipped))} reach the logits only through the class token, "
                       "so the cut is one block earlier)" if skipped else "")
                return s, (f"layer='auto' chose {s.name!r}, the output {what} of the last block whose "
                           f"patches reach the logits{why}; its activations are signed: use method='pca', "
                           "'kmeans' or 'eddp' there, or ModelSplit(model, layer, signed='split') for "
                           "NMF-like methods (they need activations ≥ 0)")
        except (ConceptLensError, RuntimeError):  # cannot be cut there, or h fails: try the block before
            pass
        skipped.append(next((n for n in (s.name, *s.aliases) if n.split("@")[0] in blocks), s.name))
        if len(skipped) >= 3:
            break
    raise LayerError(f"layer='auto' could not cut the model at its last blocks ({', '.join(skipped)}); "
                     "name a layer (see split.layers())")


def _positions(site: Any) -> int:
    shape = site.grid
    return int(shape[0] * shape[1]) if len(shape) == 3 else 0


def reaches_logits(h: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor) -> bool:
    """True when changing the grid ``A [n,h,w,C]`` changes ``h``'s logits (beyond float noise)."""
    gen = torch.Generator().manual_seed(2)
    scale = float(A.abs().max()) or 1.0
    noise = torch.randn(A.shape, generator=gen).to(A.device, A.dtype) * scale
    with torch.no_grad():
        a, b = h(A), h(A + noise)
    return bool((a - b).abs().max() > 1e-4 * max(1.0, float(a.abs().max())))
