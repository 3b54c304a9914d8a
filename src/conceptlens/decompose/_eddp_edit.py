"""EDDP's concept edits: remove (or scale) concepts in activations, and a head that sees the edit.

Notation as in :mod:`conceptlens.decompose.eddp`: ``x [..., C]`` activations, ``w_i [C]``, ``b_i`` a
concept's detector (``y_i = σ(w_iᵀx − b_i)``), ``s_i [C]`` its signal vector, ``k_i`` the edit's factor.
The paper's edit is ``x' = ReLU(x − Σ_i σ(w_iᵀx − b_i) · k_i · s_i)``, all responses taken on the original
``x``: one simultaneous edit, not a sequence. These are plain functions of a fitted EDDP's tensors
(re-exported by :mod:`conceptlens.decompose.eddp`; :meth:`EDDP.edit_head` builds an
:class:`UnlearnedHead`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens.decompose.base import Decomposition, as_rows, check_channels, check_finite, get
from conceptlens.errors import NotFittedError, ParameterError

__all__ = ["remove_concepts", "unlearn", "UnlearnedHead"]


def _edit_tensors(
    d: Decomposition, remove: Sequence[int], scale: Mapping[int, float] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated ``(W [r, C], b [r], S [r, C], factors [r])`` of the concepts to edit out."""
    if not isinstance(d, get("eddp")):  # through the registry: this module is imported by eddp.py
        raise ParameterError(f"edits need a fitted EDDP decomposition, got {type(d).__name__}")
    if getattr(d, "components_", None) is None:
        raise NotFittedError("the EDDP decomposition is not fitted: call .fit(A) first")
    k = d.decoding_directions_.shape[0]
    remove = list(remove)
    scale = dict(scale or {})
    for i in [*remove, *scale]:
        if isinstance(i, bool) or not isinstance(i, int) or not -k <= i < k:
            raise ParameterError(
                f"concept index {i!r} is out of range: the decomposition has {k} concepts (0–{k - 1})"
            )
    ids = sorted({i % k for i in remove} | {i % k for i in scale})
    for i, f in scale.items():
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f):
            raise ParameterError(f"scale for concept {i} must be a finite number, got {f!r}")
    fac = [float(scale.get(i, scale.get(i - k, 1.0))) for i in ids]
    idx = torch.tensor(ids, dtype=torch.long, device=d.decoding_directions_.device)
    W = d.decoding_directions_[idx]
    return W, d.biases_[idx], d.encoding_directions_[idx], torch.tensor(fac, dtype=W.dtype)


def remove_concepts(
    A: torch.Tensor,
    d: Decomposition,
    remove: Sequence[int],
    scale: Mapping[int, float] | None = None,
    *,
    relu: bool | None = None,
) -> torch.Tensor:
    """Edit concepts out of activations: ``x' = ReLU(x − Σ_i σ(w_iᵀx − b_i) · k_i · s_i)`` per position.

    The detector responses are all computed on the *original* ``x`` (one simultaneous edit, not a
    sequence), then the scaled signal vectors are subtracted.

    Parameters
    ----------
    A : Tensor ``[..., C]``
        Activations (e.g. ``[N, h, w, C]``); differentiable.
    d : EDDP
        A fitted decomposition.
    remove : sequence of int
        Concepts to remove with factor ``k_i = 1``.
    scale : dict[int, float], optional
        Concepts with their own factor ``k_i`` (``k_i > 1`` removes more, ``k_i < 0`` adds the concept);
        a concept listed in both uses its ``scale`` factor.
    relu : bool, optional
        Clamp the result at 0 (the paper's edit, for post-ReLU layers). None: clamp iff the activations
        the decomposition was fitted on were all ≥ 0.

    Returns
    -------
    Tensor ``[..., C]``
        The edited activations (same shape, dtype and device as ``A``).
    """
    rows, lead = as_rows(A)
    W, b, S, fac = _edit_tensors(d, remove, scale)
    check_channels(rows, W.shape[1], "the decomposition")
    check_finite(rows)
    if relu is None:
        relu = bool(getattr(d, "input_min_", torch.tensor(0.0)) >= 0)
    W, b, S, fac = (x.to(rows.device, rows.dtype) for x in (W, b, S, fac))
    y = torch.sigmoid(rows @ W.T - b)  # [n, r]
    out = rows - (y * fac) @ S
    if relu:
        out = F.relu(out)
    return out.reshape(*lead, out.shape[-1])


class UnlearnedHead(nn.Module):
    """A head that sees activations with concepts edited out: ``h'(A) = h(remove_concepts(A, d, …))``.

    Parameters
    ----------
    head : callable
        The original head ``h`` (e.g. ``split.h``): activations ``[B, ..., C]`` → logits ``[B, K]``.
    d : EDDP
        A fitted decomposition (its tensors are copied into buffers; later refits do not change it).
    remove, scale, relu
        As in :func:`remove_concepts`.
    """

    def __init__(
        self,
        head: Callable[[torch.Tensor], torch.Tensor],
        d: Decomposition,
        remove: Sequence[int],
        scale: Mapping[int, float] | None = None,
        relu: bool | None = None,
    ) -> None:
        super().__init__()
        if not callable(head):
            raise ParameterError(f"head must be callable (activations → logits), got {type(head).__name__}")
        W, b, S, fac = _edit_tensors(d, remove, scale)
        self.head = head
        self.register_buffer("filters", W.detach().clone())
        self.register_buffer("biases", b.detach().clone())
        self.register_buffer("signals", S.detach().clone())
        self.register_buffer("factors", fac.detach().clone())
        if relu is None:
            relu = bool(getattr(d, "input_min_", torch.tensor(0.0)) >= 0)
        self.relu = relu

    def edit(self, A: torch.Tensor) -> torch.Tensor:
        """The edited activations ``[..., C]``."""
        rows, lead = as_rows(A)
        check_channels(rows, self.filters.shape[1], "the decomposition")
        W, b, S, fac = (x.to(rows.device, rows.dtype) for x in (self.filters, self.biases, self.signals,
                                                                   self.factors))
        out = rows - (torch.sigmoid(rows @ W.T - b) * fac) @ S
        if self.relu:
            out = F.relu(out)
        return out.reshape(*lead, out.shape[-1])

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of the edited activations."""
        return self.head(self.edit(A))


def unlearn(
    split_h: Callable[[torch.Tensor], torch.Tensor],
    d: Decomposition,
    i: int | Sequence[int],
    *,
    scale: float = 1.0,
    relu: bool | None = None,
) -> UnlearnedHead:
    """A head that ignores concept ``i``: ``h'(A) = h(ReLU(A − σ(w_iᵀA − b_i) · scale · s_i))``.

    No retraining: concept ``i``'s encoding direction is subtracted, at every position, in proportion
    to its detector's response, before the original head runs (the paper's correction by editing).
    Where the detector is silent (``y_i ≈ 0``) the activations, and so the logits, are unchanged
    (up to ``y_i · ‖s_i‖``).

    Parameters
    ----------
    split_h : callable
        The head ``h`` (e.g. ``ModelSplit.h``): activations ``[B, ..., C]`` → logits ``[B, K]``.
    d : EDDP
        A fitted decomposition.
    i : int or sequence of int
        Concept(s) to unlearn.
    scale : float
        Factor ``k`` of the edit for every unlearned concept.
    relu : bool, optional
        As in :func:`remove_concepts`.

    Returns
    -------
    UnlearnedHead
        An ``nn.Module``: ``h'(A) -> logits``; ``h'.edit(A)`` gives the edited activations.
    """
    ids = [i] if isinstance(i, int) else list(i)
    return UnlearnedHead(split_h, d, [], {j: scale for j in ids}, relu=relu)
