"""Default layers for CRAFT's recursion: the outputs of the stages before the explainer's layer.

A *stage* is a run of layers at one spatial resolution; its output is the last activation call site at
that resolution (:func:`conceptlens.split.sites.default_layers`, the same rule as activation matching:
``layer1`` … ``layer4`` on a ResNet). The layers before the explainer's are those at a finer resolution
than its own; the recursion splits concepts at the deepest ``n`` of them, deep to shallow: under
EfficientNet-Lite0's ``_swish@1`` (7×7×1280), ``_blocks.11._swish@0`` (14×14×672, the expansion before
the stride-2 block) then ``_blocks.5._swish@0`` (28×28×240).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptlens.errors import LayerError
from conceptlens.split.sites import activation_sites, default_layers

__all__ = ["earlier_stages"]


def earlier_stages(split: Any, n: int = 2) -> list[str]:
    """The outputs of the ``n`` stages before ``split.layer``, deep to shallow.

    Parameters
    ----------
    split
        A :class:`~conceptlens.ModelSplit` at a spatial layer ``[h, w, C]``.
    n
        How many stages (fewer when the model has fewer).

    Returns
    -------
    list of str
        Layer names, each earlier in the network than the previous one.

    Raises
    ------
    LayerError
        No earlier stage (the layer is at the model's first resolution): pass the layers yourself.
    """
    shape = tuple(split.activation_shape)
    size = getattr(getattr(split, "preset", None), "size", 224)
    param = next(split.model.parameters(), None)
    probe = torch.zeros(1, 3, size, size, device=param.device if param is not None else None,
                        dtype=param.dtype if param is not None and param.is_floating_point() else None)
    names = set(split.layers())
    here = shape[0] * shape[1] if len(shape) == 3 else 1
    stages = [s for s in default_layers(activation_sites(split.model, probe))
              if s in names and s != split.layer]
    by_name = dict(split.describe_layers())
    finer = [s for s in stages if len(by_name[s]) == 3 and by_name[s][0] * by_name[s][1] > here]
    if not finer:
        raise LayerError(f"layer {split.layer!r} has no earlier stage (no layer at a finer resolution) to "
                         "split concepts at: pass layers=[…] (see `conceptlens layers`)")
    return finer[::-1][:n]
