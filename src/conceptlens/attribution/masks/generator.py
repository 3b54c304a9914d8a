"""The mask generator: ``groups`` independent small U-Nets run as one batched module (grouped convolutions).

Notation
--------
x
    ``[N,3,H,W]`` normalised images.
s
    side of the U-Net's logits (``size``; 28 for 224² inputs).
d
    side of the generator's output logits (``detail``, ``≥ s``): the U-Net's ``[s, s]`` logits upsampled
    bilinearly to ``d × d``, plus a learned logit map ``[d, d]`` per group where ``free`` says so.
c
    the U-Net's width (``c, c, 2c, 2c`` encoder channels).

Per-image mode uses ``groups = N`` (image ``i`` goes through generator ``i`` only; generators with the same
seed start from the same weights, so an image's mask does not depend on the rest of the batch); the
amortised mode uses one group.

Architecture: the image is area-resampled to ``4s``; encoder convs at ``4s`` (c), ``2s`` (c), ``s`` (2c) and
``s/2`` (2c); decoder: upsample to ``s``, concatenate the ``s`` encoder features (skip), conv (2c),
concatenate the area-pooled ``2s`` features (second skip), 1×1 conv to one logit.

Why the features are standardised per image before the output layer: the mean mask logit is then the output
bias alone, so the area prior moves the bias, the other terms shape the mask, and the logits cannot
saturate (a saturated sigmoid would stop the straight-through gradient). Why a logit map: the U-Net
proposes smooth regions from the image's features; the map can move single cells of ``(H/d)²`` pixels that
the features alone cannot separate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens.errors import ParameterError

__all__ = ["GroupedUNet", "take_groups"]


class GroupedUNet(nn.Module):
    """``groups`` independent small U-Nets as one module: ``[N,3,H,W]`` → logits ``[N,1,d,d]``.

    Parameters
    ----------
    size
        Side ``s`` of the U-Net's logits.
    width
        Channels ``c``.
    groups
        Number of independent U-Nets (``N`` in per-image mode, 1 in amortised mode).
    init_logit
        Initial bias of the output logit (> 0: masks that start by keeping almost everything).
    seed
        One seed for every group, or one per group (restarts): equal seeds give equal starting weights.
    free
        Whether each group (or all, with one bool) has a learned logit map at ``d × d``.
    detail
        Side ``d`` of the output (default and minimum: ``size``).
    """

    def __init__(
        self, size: int, width: int, groups: int, init_logit: float, seed: int | Sequence[int],
        free: bool | Sequence[bool] = False, detail: int | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        # side of the output logits: the U-Net's [s, s] logits are upsampled (bilinear) to it, and the
        # learned logit map lives at it, so masks can be finer than the U-Net's features
        self.detail = max(int(detail or size), size)
        self.groups = groups
        c = width
        specs = {  # name: (in, out, kernel)
            "e0": (3, c, 3), "e1": (c, c, 3), "e2": (c, 2 * c, 3), "e3": (2 * c, 2 * c, 3),
            "d2": (4 * c, 2 * c, 3), "out": (3 * c, 1, 1),
        }
        seeds = [int(seed)] * groups if isinstance(seed, int) else [int(v) for v in seed]
        if len(seeds) != groups:
            raise ParameterError(f"got {len(seeds)} seeds for {groups} generators")
        start = {sd: _initial_weights(specs, sd, init_logit) for sd in dict.fromkeys(seeds)}
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for name in specs:
            self.weights[name] = nn.Parameter(torch.cat([start[sd][name][0] for sd in seeds]))
            self.biases[name] = nn.Parameter(torch.cat([start[sd][name][1] for sd in seeds]))
        flags = torch.as_tensor(free, dtype=torch.float32).reshape(-1)
        self.register_buffer("free_on", flags.expand(groups).clone().reshape(groups, 1, 1, 1))
        d = self.detail
        self.free = nn.Parameter(torch.zeros(groups, 1, d, d)) if bool(flags.any()) else None

    def select(self, rows: torch.Tensor) -> GroupedUNet:
        """A new module holding only the generators ``rows`` (``[r]`` long indices), with their weights.

        Every parameter and buffer is stacked group by group along its first dimension, so each is cut
        with :func:`take_groups`; an optimiser's per-element state can be cut the same way.
        """
        new = copy.copy(self)  # the module's own dicts are replaced below, the tensors are fresh
        new._parameters, new._buffers, new._modules = {}, {}, {}
        new.groups = int(rows.numel())
        new.weights = nn.ParameterDict(
            {k: nn.Parameter(take_groups(v.detach(), self.groups, rows)) for k, v in self.weights.items()})
        new.biases = nn.ParameterDict(
            {k: nn.Parameter(take_groups(v.detach(), self.groups, rows)) for k, v in self.biases.items()})
        new.register_buffer("free_on", take_groups(self.free_on, self.groups, rows))
        free = self.free
        new.free = None if free is None else nn.Parameter(take_groups(free.detach(), self.groups, rows))
        return new

    def _conv(self, name: str, t: torch.Tensor, stride: int = 1) -> torch.Tensor:
        w = self.weights[name]
        return F.conv2d(t, w, self.biases[name], stride=stride, padding=w.shape[-1] // 2, groups=self.groups)

    def _cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # concatenate channels group by group so that generator i keeps seeing only its own features
        n, ca, h, w = a.shape
        g = self.groups
        return torch.cat([a.reshape(n, g, ca // g, h, w), b.reshape(n, g, -1, h, w)], 2).reshape(n, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N,1,d,d]`` of images ``x [N,3,H,W]`` (``N = groups`` when ``groups > 1``)."""
        n = x.shape[0]
        s = self.size
        if self.groups > 1:
            if n != self.groups:
                raise ParameterError(
                    f"this generator holds {self.groups} per-image U-Nets but got {n} images"
                )
            x = x.reshape(1, n * x.shape[1], *x.shape[2:])
        t = F.interpolate(x, size=(4 * s, 4 * s), mode="area") if x.shape[-1] != 4 * s else x
        e0 = _block(self._conv("e0", t))
        e1 = _block(self._conv("e1", e0, 2))  # 2s
        e2 = _block(self._conv("e2", e1, 2))  # s
        e3 = _block(self._conv("e3", e2, 2))  # ceil(s/2)
        u = F.interpolate(e3, size=(s, s), mode="bilinear", align_corners=False)
        d2 = _block(self._conv("d2", self._cat(u, e2)))
        z = self._conv("out", _standardise(self._cat(d2, F.avg_pool2d(e1, 2))))
        z = z.reshape(n, 1, s, s)
        if self.detail != s:
            z = F.interpolate(z, size=(self.detail, self.detail), mode="bilinear", align_corners=False)
        return z if self.free is None else z + self.free * self.free_on


def take_groups(t: torch.Tensor, groups: int, rows: torch.Tensor) -> torch.Tensor:
    """The slices of groups ``rows`` of ``t``, whose first dimension stacks ``groups`` equal blocks."""
    return t.reshape(groups, -1, *t.shape[1:])[rows].reshape(-1, *t.shape[1:]).clone()


def _initial_weights(
    specs: dict[str, tuple[int, int, int]], seed: int, init_logit: float
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded starting weights ``{name: (weight [out,in,k,k], bias [out])}`` of one U-Net."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, (cin, cout, k) in specs.items():
        fan_in = cin * k * k
        # He-uniform so that the random initial masks have O(1) logit variation;
        # the output starts nearly flat (logit std ≈ 0.3 around init_logit)
        bound = math.sqrt(6.0 / fan_in) if name != "out" else 0.3 * math.sqrt(3.0 / fan_in)
        w = (torch.rand(cout, cin, k, k, generator=gen) * 2 - 1) * bound
        b = torch.zeros(cout) if name != "out" else torch.full((1,), float(init_logit))
        out[name] = (w, b)
    return out


def _standardise(t: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per (image, channel) over space (instance norm without affine)."""
    mu = t.mean((-2, -1), keepdim=True)
    var = t.var((-2, -1), keepdim=True, unbiased=False)
    return (t - mu) / torch.sqrt(var + 1e-5)


def _block(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(_standardise(t), 0.2)
