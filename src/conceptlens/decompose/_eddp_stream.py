"""EDDP from a store: mini-batches drawn from blocks of whole images, full passes chunk by chunk.

Notation as in :mod:`conceptlens.decompose.eddp` (``x [n, C]`` rows, ``N`` images of ``P`` rows each).

EDDP trains by Adam steps on mini-batches of rows drawn at random (and, for URA, batches of whole images);
everything else is a full pass (moments, signal statistics, logit gaps, the decode offset), which a
:class:`~conceptlens.decompose._image_stream.RowSource` runs chunk by chunk from a tensor or a store
alike. Random rows from all ``n`` would read the whole store at every step, so the steps draw from
*blocks*: ``block_size`` rows rounded down to whole images, visited in a seeded random order (a new
permutation when all have been visited), each for ``⌈rows / batch_size⌉`` steps (every row drawn about
once per visit); each step's rows, and URA's images, are drawn uniformly from the current block. Memory is
one block, not ``n`` rows. When one block holds all the rows the draws are exactly those of the
in-memory fit (no permutation is drawn), so a store of at most ``block_size`` rows gives the in-memory
bank; above that, a tensor fitted with the same ``block_size`` gives the store's bank.
"""

from __future__ import annotations

import math

import torch

from conceptlens.decompose._eddp_fit import logit_gap
from conceptlens.decompose._eddp_losses import CHUNK, EPS, orthogonality_loss
from conceptlens.decompose._image_stream import RowSource

__all__ = ["STORE_BLOCK", "BlockSampler", "fitted_tensors", "polish_signals"]

#: Rows per block when EDDP reads a store and ``block_size`` is None (84 MB at C = 1,280 in float32).
STORE_BLOCK = 16384


class BlockSampler:
    """Seeded mini-batches of rows and of whole images from blocks of a :class:`RowSource`.

    Parameters
    ----------
    src : RowSource
        The fit rows.
    block_size : int or None
        Rows per block, rounded down to whole images (at least one); None: one block of all rows.
    gen : torch.Generator
        The fit's generator (its draws interleave with the fit's own).
    """

    def __init__(self, src: RowSource, block_size: int | None, gen: torch.Generator) -> None:
        self.src, self.gen = src, gen
        per = src.per_image
        images = src.n_images if block_size is None else max(int(block_size) // per, 1)
        self.block_rows = images * per
        self.n_blocks = -(-src.n_images // images)
        self.order: list[int] = []
        self.left = 0
        # one block: all rows, read once; else the first step reads one
        self.cur = src.block(0, src.n_rows) if self.n_blocks == 1 else torch.empty(0)
        self.reads = 0  # blocks read after the first (diagnostics, tests)

    def _advance(self, batch_size: int) -> None:
        if self.n_blocks == 1:
            return
        if self.left > 0:
            self.left -= 1
            return
        if not self.order:
            self.order = torch.randperm(self.n_blocks, generator=self.gen, device=self.gen.device).tolist()
        j = self.order.pop(0)
        self.cur = self.src.block(j * self.block_rows, min((j + 1) * self.block_rows, self.src.n_rows))
        self.reads += 1
        self.left = math.ceil(self.cur.shape[0] / batch_size) - 1

    def rows(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """``[batch_size, C]`` rows drawn uniformly (with replacement) from the current block."""
        self._advance(batch_size)
        idx = torch.randint(self.cur.shape[0], (batch_size,), generator=self.gen, device=device)
        return self.cur[idx.to(self.cur.device)]

    def images(self) -> torch.Tensor:
        """The current block's images ``[b, *S, C]`` (URA draws its items from them)."""
        return self.cur.reshape(-1, *self.src.image_shape, self.src.n_channels)


def fitted_tensors(
    src: RowSource,
    Wx: torch.Tensor,
    bx: torch.Tensor,
    S_x: torch.Tensor,
    mu: torch.Tensor,
    dtype: torch.dtype,
    signal: str,
    edit_scale: str,
) -> dict[str, torch.Tensor]:
    """EDDP's fitted tensors from the final detectors and signals ``S_x [k, C]`` (activation space).

    Two passes over the rows (the logit gaps; the mean response and the minimum).

    Parameters
    ----------
    src : RowSource
    Wx, bx : Tensor ``[k, C]``, ``[k]``
        Detectors in activation space.
    S_x : Tensor ``[k, C]``
        Signals in activation space, before their scale.
    mu : Tensor ``[C]``
    dtype : torch.dtype
        Working precision.
    signal, edit_scale : str
        The estimator's parameters.

    Returns
    -------
    dict
        ``decoding_directions_``, ``biases_``, ``margins_``, ``encoding_directions_``, ``decode_gain_``,
        ``input_min_``, ``decode_offset_``.
    """
    rdt = src.dtype
    W, b = Wx.to(rdt), bx.to(rdt)
    # the gap between each detector's positives and negatives: decode's scale (and "gap" edits')
    gap = logit_gap(src, W, b, signal).to(dtype)
    # exactly w_iᵀ s_i = 1 (or m_i): the raw signals only approximately satisfy w_iᵀ s_i = 1 once the
    # orthogonality term has acted; a signal that points away from its filter keeps its length
    own = (Wx * S_x).sum(1)
    want = torch.ones_like(gap) if edit_scale == "unit" else gap
    S_x = S_x * torch.where(own > EPS, want / own.clamp_min(EPS), want)[:, None]
    S = S_x.to(rdt).contiguous()
    gain = (gap / want).to(rdt).contiguous()
    # decode = the signal model x ≈ μ + Σ_i (y_i − ȳ_i) g_i s_i: the mean carries what no concept explains,
    # so that h(decode(encode(A))) is comparable with the other methods' reconstructions
    ybar = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    lo: torch.Tensor | None = None
    for c in src.chunks(CHUNK):
        c = c.to(W.device)
        ybar += torch.sigmoid(c @ W.T - b).sum(0, dtype=torch.float64)
        m = c.min()
        lo = m if lo is None else torch.minimum(lo, m)
    ybar = (ybar / src.n_rows).to(rdt)
    return {
        "decoding_directions_": W.contiguous(),
        "biases_": b.contiguous(),
        "margins_": (1.0 / W.norm(dim=1)).contiguous(),
        "encoding_directions_": S,
        "decode_gain_": gain,
        "input_min_": lo.to(rdt).reshape(()),  # type: ignore[union-attr]  # a RowSource is never empty
        "decode_offset_": (mu.to(rdt) - (ybar * gain) @ S).contiguous(),
    }


def polish_signals(S: torch.Tensor, target: torch.Tensor, u: torch.Tensor, steps: int, lr: float,
                   signal_weight: float, orth_weight: float) -> torch.Tensor:
    """``steps`` Adam steps on the signals ``S [k, r]`` alone against the exact target ``[k, r]`` (no data
    access); ``u [k, r]`` the unit filters of the orthogonality term."""
    S = S.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([S], lr=lr)
    for _ in range(steps):
        reg = ((S - target).square().sum(1) / target.square().sum(1).clamp_min(EPS)).mean()
        loss = signal_weight * reg + orth_weight * orthogonality_loss(u, S)
        (g,) = torch.autograd.grad(loss, [S])
        S.grad = g
        opt.step()
    return S.detach()
