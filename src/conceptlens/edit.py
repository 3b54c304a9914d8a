"""Concept edits: the model's output with concepts taken out of (or rescaled in) the layer.

Notation: ``A [N, h, w, C]`` activations, ``U = encode(A) [N, h, w, k]`` codes, ``D_i`` concept ``i``'s
direction (the row of the bank that ``decode`` adds per unit of code), ``f_i`` the fraction of concept ``i``
taken away (``1`` removes it, ``0.5`` halves it, ``−1`` doubles it), ``A'`` the edited activations and
``h(A')`` the counterfactual logits.

How an edit removes a concept is declared by the method (``Decomposition.edit_rule``):

* ``"reconstruction"`` (NMF, PCA, k-means, CRAFT, FACE, …): ``A' = A − Σ_i f_i U_i ⊗ D_i``; the residual
  ``A − decode(U)`` is kept (:class:`ConceptEditHead`);
* ``"own"``: the method builds the edited head itself (``Decomposition.edit_head``; EDDP's encoding
  directions weighted by its detectors, the paper's edit).

This module never names a method: it reads the declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from conceptlens import _display
from conceptlens.errors import ParameterError
from conceptlens.importance.base import concept_directions

__all__ = ["EditResult", "ConceptEditHead", "removed_fractions", "edit_head"]


@dataclass(frozen=True)
class EditResult:
    """The model's logits before and after a concept edit (a counterfactual: "without concept i, …").

    Attributes
    ----------
    logits : torch.Tensor
        ``[N, n_classes]`` logits ``h(A')`` of the edited activations.
    original : torch.Tensor
        ``[N, n_classes]`` logits ``h(A)`` of the unedited activations.
    delta_target : torch.Tensor
        ``[N]`` change of the target logit, ``logits[:, target] − original[:, target]`` (negative: the
        edit lowers the class's score).
    target : int
        The explainer's target class.
    removed : dict[int, float]
        Concept → the fraction of its component taken away (``1`` removed, ``0.5`` halved, ``−1``
        doubled); concepts left as they are do not appear.
    classes : tuple[str, ...]
        The model's class names (may be empty), for display.
    """

    logits: torch.Tensor
    original: torch.Tensor
    delta_target: torch.Tensor
    target: int
    removed: dict[int, float]
    classes: tuple[str, ...] = ()

    @property
    def delta(self) -> torch.Tensor:
        """``[N, n_classes]`` change of every logit."""
        return self.logits - self.original

    @property
    def flipped(self) -> torch.Tensor:
        """``[N]`` bool, True where the edit changes the model's top-1 class."""
        return self.logits.argmax(1) != self.original.argmax(1)

    def _repr_html_(self) -> str:
        """A notebook card: the target logit before and after on each image, flips marked (rendered by
        :func:`conceptlens.report.display.edit_html` through the :mod:`conceptlens._display` hook)."""
        return str(_display.render("edit_html", self))


class ConceptEditHead(torch.nn.Module):
    """A head that sees activations with concepts' parts taken out: ``h'(A) = h(A − Σ_i f_i U_i ⊗ D_i)``.

    The counterpart of EDDP's edit for reconstruction methods (NMF, PCA, k-means, CRAFT, FACE): concept
    ``i``'s share of the reconstruction, its code ``U[..., i] = encode(A)[..., i]`` times its direction
    ``D_i`` (the row of the bank that ``decode`` adds per unit of code), is subtracted from the
    activations, scaled by ``f_i``; the residual ``A − decode(U)`` is kept. Removing every concept of an
    NMF therefore leaves exactly the residual. Nothing is clamped at 0: a clamp would break that
    invariant, and the head of a post-ReLU layer is defined (if out of distribution) on negative inputs.
    Rows where a concept's code is 0 are not changed by its removal.

    Parameters
    ----------
    head : callable
        ``h``: activations ``[B, ..., C]`` → logits ``[B, K]`` (e.g. ``split.h``).
    decomposition : Decomposition
        A fitted decomposition with an affine ``decode`` (kept by reference: its ``encode`` gives ``U``).
    removed : dict[int, float]
        Concept index → fraction ``f_i`` of its part to subtract (``1`` removes it, ``−1`` doubles it).
    """

    def __init__(self, head: Any, decomposition: Any, removed: dict[int, float]) -> None:
        super().__init__()
        if not callable(head):
            raise ParameterError(f"head must be callable (activations → logits), got {type(head).__name__}")
        self.head = head
        self.decomposition = decomposition
        D, _ = concept_directions(decomposition)
        ids = sorted(removed)
        self.register_buffer("index", torch.tensor(ids, dtype=torch.long, device=D.device))
        self.register_buffer("directions", D[self.index].detach().clone())  # [r, C]
        self.register_buffer("factors", torch.tensor([removed[i] for i in ids], dtype=D.dtype,
                                                     device=D.device))  # [r]

    def edit(self, A: torch.Tensor) -> torch.Tensor:
        """The edited activations ``A' [..., C]`` of ``A [..., C]`` (same shape, dtype and device)."""
        if self.index.numel() == 0:
            return A
        U = self.decomposition.encode(A)[..., self.index.to(A.device)]  # [..., r]
        part = (U * self.factors.to(U.device, U.dtype)) @ self.directions.to(U.device, U.dtype)
        return A - part.to(A.dtype)

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of the edited activations."""
        return self.head(self.edit(A))


def removed_fractions(
    k: int, remove: int | Sequence[int] | None, scale: Mapping[int, float] | None
) -> dict[int, float]:
    """Validated ``{concept: fraction removed}`` of ``remove`` and ``scale`` (untouched ones left out).

    Parameters
    ----------
    k
        Number of concepts of the bank.
    remove
        Concept index or indices to remove (fraction 1).
    scale
        ``{concept: s}``: keep ``s`` times the concept (fraction ``1 − s``).

    Returns
    -------
    dict[int, float]
        Sorted by concept; concepts whose fraction is 0 (kept as they are) are left out.

    Raises
    ------
    ParameterError
        An index outside ``0 … k−1``, a non-finite scale, a concept both removed and scaled.
    """

    def index(i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < k:
            raise ParameterError(
                f"concept index {i!r} is out of range: the explainer has {k} concepts, valid indices are "
                f"0–{k - 1} (ex.importance_.argsort(descending=True) lists them by importance)"
            )
        return int(i)

    if remove is None:
        remove = []
    elif isinstance(remove, (torch.Tensor, np.ndarray)):
        remove = remove.reshape(-1).tolist()
    elif isinstance(remove, (int, np.integer)) and not isinstance(remove, bool):
        remove = [int(remove)]
    elif isinstance(remove, (str, bytes)) or not isinstance(remove, Sequence):
        raise ParameterError(
            f"remove must be a concept index or a list of them, got {type(remove).__name__}")
    if scale is None:
        scale = {}
    elif not isinstance(scale, Mapping):
        raise ParameterError(
            f"scale must be a dict {{concept index: factor}}, got {type(scale).__name__}")
    out: dict[int, float] = {}
    for i in remove:
        out[index(i)] = 1.0
    for i, s in scale.items():
        j = index(i)
        if j in out:
            raise ParameterError(f"concept {j} is both in remove and in scale; give it in one of them "
                                 "(scale={j: 0} removes it)")
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) \
                or not np.isfinite(float(s)):
            raise ParameterError(f"scale for concept {j} must be a finite number (0 removes the concept, "
                                 f"1 keeps it, 2 doubles it), got {s!r}")
        out[j] = 1.0 - float(s)
    # a factor of exactly 1 keeps the concept: leaving it out makes the no-op edit exactly the identity
    return {i: f for i, f in sorted(out.items()) if f != 0.0}


def edit_head(head: Callable[[torch.Tensor], torch.Tensor], decomposition: Any,
              removed: Mapping[int, float]) -> torch.nn.Module:
    """The head ``h'(A) = h(A')`` with the ``removed`` concepts edited out, by the method's declared rule.

    Parameters
    ----------
    head
        ``h``: activations ``[B, ..., C]`` → logits ``[B, K]``.
    decomposition
        A fitted decomposition; its class's ``edit_rule`` says how a concept is removed.
    removed
        ``{concept: fraction}`` as returned by :func:`removed_fractions`.

    Returns
    -------
    torch.nn.Module
        ``h'`` with ``h'.edit(A)`` returning ``A' [..., C]``.
    """
    if getattr(decomposition, "edit_rule", "reconstruction") == "own":
        return decomposition.edit_head(head, dict(removed))
    return ConceptEditHead(head, decomposition, dict(removed))
