"""FACE's KL term and the forward–backward step that its fit and its encode share.

Notation (as in :mod:`conceptlens.decompose.face`):

=========  =================  ===================================================================
``A``      ``[N, *S, C]``     non-negative activations of ``N`` images; ``n = N · |S|`` rows
``W``      ``[k, C]``         the concept bank; ``Uᵀ`` ``[k, n]`` the codes, ``Â = U W``
``h``      ``[B, *S, C]``     the classifier head → logits ``[B, K]``
``p_i``    ``[K]``            ``softmax h(A_i)``; ``q_i = softmax h(Â_i)``
``μ``      scalar             the KL's weight in ``½‖A − U W‖²_F + μ Σ_i KL(p_i ‖ q_i)``
``L``      scalar             the step's curvature bound on the KL (found by backtracking)
=========  =================  ===================================================================

The head acts on whole images, so the KL couples all the rows of one image: :class:`KLTerm` evaluates it
and its gradient in ``Â`` image batch by image batch (exact sums, bounded memory). :func:`_prox_step`
keeps the Frobenius part exact and linearises the KL, which turns a step into the non-negative quadratic
that NMF's :func:`~conceptlens.decompose.nmf.hals` solves (target shifted by the KL gradient, ``L·I``
added to the Gram matrix); ``L`` grows until the linearisation plus ``(L/2)‖ΔX‖²`` majorises the KL at the
new point, so every accepted step decreases the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch

from conceptlens.decompose.nmf import DELTA, hals
from conceptlens.errors import HeadError

__all__ = ["Head", "check_head", "KLTerm", "Grad", "face_objective"]

Head = Callable[[torch.Tensor], torch.Tensor]

_MAX_BACKTRACK = 40
# Float noise allowance when testing the majorisation: the KL is evaluated in float32 by most heads.
_SLACK = 1e-7


def check_head(head: Head | None, sample: torch.Tensor) -> None:
    """Raise :class:`HeadError` unless ``head`` is a callable that autograd can differentiate.

    Parameters
    ----------
    head : callable or None
        ``[B, *S, C] → [B, K]`` logits (e.g. ``ModelSplit.h``).
    sample : Tensor ``[B, *S, C]``
        A few images' activations to probe the head with.
    """
    if head is None:
        raise HeadError(
            "FACE needs the classifier head h (activations → logits) for its KL term: pass "
            "FACE(..., head=split.h) or call .set_head(split.h), where split is the ModelSplit the "
            "activations came from (ConceptExplainer does this for you). For NMF without the head use "
            'method="nmf".'
        )
    if not callable(head):
        raise HeadError(
            f"head must be a callable [B, *S, C] → [B, K] (e.g. split.h), got {type(head).__name__}"
        )
    a = sample.detach().clone().requires_grad_(True)
    shape = list(a.shape)
    try:
        with torch.enable_grad():
            out = head(a)
    except Exception as e:  # any failure of user code is reported with the shape we passed
        raise HeadError(
            f"calling the head on activations of shape {shape} ({a.dtype}) failed: {type(e).__name__}: {e}. "
            "FACE calls h on whole images [B, *S, C] (channels last, as ModelSplit.g returns them): fit on "
            "A with its image structure, e.g. [N, h, w, C], and pass head=split.h of the same ModelSplit"
        ) from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != a.shape[0]:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HeadError(f"the head must return logits [B, K] for B={a.shape[0]} images, got {got}")
    if not torch.isfinite(out).all():
        raise HeadError("the head returned NaN/Inf logits on the activations; check the layer and the head")
    if not out.requires_grad or out.grad_fn is None:
        raise HeadError(
            "the head is not differentiable: its logits carry no autograd graph back to the activations "
            "(a .detach(), torch.no_grad(), argmax or a numpy round trip inside h?). FACE differentiates "
            "KL(softmax h(A) ‖ softmax h(UW)) through h; pass a differentiable head such as ModelSplit.h"
        )
    # A fixed, non-uniform cotangent: a uniform one is blind to heads whose logits sum to a constant.
    v = torch.linspace(1.0, 2.0, out.shape[1], dtype=out.dtype, device=out.device).expand_as(out)
    try:
        (g,) = torch.autograd.grad((out * v).sum(), a, allow_unused=True)
    except Exception as e:
        raise HeadError(
            f"autograd cannot differentiate the head ({type(e).__name__}: {e}); FACE needs ∂h/∂A. Pass a "
            "differentiable head such as ModelSplit.h"
        ) from e
    if g is None or not bool(g.ne(0).any()):
        raise HeadError(
            "the head's logits do not depend differentiably on the activations (zero gradient everywhere: "
            "detached or piecewise-constant head). FACE needs a differentiable head such as ModelSplit.h"
        )


class KLTerm:
    """``Σ_i KL(softmax h(A_i) ‖ softmax h(Â_i))`` and its gradient in ``Â``, mini-batched over images.

    Parameters
    ----------
    head : callable
        ``[B, *S, C] → [B, K]`` logits, differentiable.
    A : Tensor ``[N, *S, C]``
        Reference activations; ``p_i = softmax h(A_i)`` is computed once here.
    batch_images : int
        Images per call of ``head`` (bounds memory; the sums are exact).

    Notes
    -----
    The KL is computed in float64 from the head's logits (``log_softmax`` in float64), so that the
    backtracking tests of the solver are not dominated by float32 rounding of the softmax.

    When ``head`` is a bound ``ModelSplit.h`` whose split reads a spatial layer only through its mean over
    positions (:meth:`~conceptlens.split.ModelSplit.pools_first`: ``h(Â) = g(mean_hw Â)``), ``Â`` is
    pooled first and the head runs on one position per image, ``[B, 1, 1, C]``; the gradient is the
    pooled one spread evenly over the positions, ``∂/∂Â_{i,s} = ∂/∂(mean Â_i) / (h·w)``. Same values up to
    rounding, at a fraction of the cost (:attr:`pooled`).
    """

    def __init__(self, head: Head, A: torch.Tensor, batch_images: int = 64) -> None:
        self.head = head
        self.shape = tuple(A.shape)
        self.batch = max(int(batch_images), 1)
        self.pooled = _pools_first(head, self.shape)
        N = A.shape[0]
        logits = []
        with torch.no_grad():
            for i in range(0, N, self.batch):
                logits.append(head(A[i : i + self.batch]))
        self._reference(torch.cat(logits))

    @classmethod
    def from_logits(
        cls, head: Head, logits: torch.Tensor, shape: tuple[int, ...], batch_images: int = 64
    ) -> KLTerm:
        """The KL term from the reference logits ``h(A) [N, K]`` themselves (no pass over ``A``).

        Parameters
        ----------
        head : callable
            ``[B, *S, C] → [B, K]`` logits, differentiable.
        logits : Tensor ``[N, K]``
            ``h(A_i)`` per image, e.g. the logits a streamed extraction kept.
        shape : tuple of int
            ``(N, *S, C)``, the shape of the activations the term is evaluated on.
        batch_images : int
            Images per call of ``head``.
        """
        self = cls.__new__(cls)
        self.head, self.shape, self.batch = head, tuple(shape), max(int(batch_images), 1)
        self.pooled = _pools_first(head, self.shape)
        if logits.ndim != 2 or logits.shape[0] != self.shape[0]:
            raise HeadError(f"reference logits must be [N, K] with N = {self.shape[0]} images, got "
                            f"{list(logits.shape)}")
        self._reference(logits)
        return self

    def _reference(self, logits: torch.Tensor) -> None:
        """``p = softmax(logits)`` in float64, and ``Σ_j p_j log p_j`` per image."""
        self.logp = torch.log_softmax(logits.detach().to(torch.float64), dim=1)  # [N, K]
        self.p = self.logp.exp()
        # Σ_j p_j log p_j with 0·log 0 = 0 (p_j can underflow to exactly 0).
        self.neg_entropy = torch.where(self.p > 0, self.p * self.logp, torch.zeros_like(self.p)).sum(1)

    def _kl(self, logits: torch.Tensor, sl: slice) -> torch.Tensor:
        logq = torch.log_softmax(logits.to(torch.float64), dim=1)
        return self.neg_entropy[sl] - (self.p[sl] * logq).sum(1)

    def _rows(self, A_hat: torch.Tensor) -> torch.Tensor:
        """``A_hat`` as ``[N, *S, C]``, or pooled to ``[N, 1, 1, C]`` (see the class notes)."""
        Ah = A_hat.reshape(self.shape)
        return Ah.mean((1, 2), keepdim=True) if self.pooled else Ah

    def value(self, A_hat: torch.Tensor) -> torch.Tensor:
        """Per-image ``KL(p_i ‖ q_i)`` ``[N]`` (float64) for ``A_hat [N, *S, C]`` or its rows ``[n, C]``."""
        Ah = self._rows(A_hat)
        out = []
        with torch.no_grad():
            for i in range(0, self.shape[0], self.batch):
                sl = slice(i, i + self.batch)
                out.append(self._kl(self.head(Ah[sl]), sl))
        return torch.cat(out)

    def value_and_grad(self, A_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image KL ``[N]`` (float64) and ``∂ Σ_i KL_i / ∂Â`` with the shape and dtype of ``A_hat``."""
        kl, g = self.value_and_grad_op(A_hat)
        return kl, g.dense().reshape(A_hat.shape)

    def value_and_grad_op(
        self, A_hat: torch.Tensor, codes: torch.Tensor | None = None, bank: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Grad]:
        """Per-image KL ``[N]`` (float64) and the gradient ``∂ Σ_i KL_i / ∂Â`` as a :class:`Grad`.

        ``A_hat`` is ``[N, *S, C]`` or its rows ``[n, C]``. When the term pools first, ``codes [k, n]`` and
        ``bank [k, C]`` with ``A_hat = codesᵀ bank`` give the pooled rows from the factors (``[N, k] ×
        [k, C]``) instead of a pass over ``A_hat``, and the gradient stays pooled (never ``[n, C]``).
        """
        if self.pooled and codes is not None and bank is not None:
            N, k = self.shape[0], codes.shape[0]
            Ah = (codes.reshape(k, N, -1).mean(2).T @ bank).reshape(N, 1, 1, -1)
        else:
            Ah = self._rows(A_hat.detach())
        grads, out = [], []
        with torch.enable_grad():
            for i in range(0, self.shape[0], self.batch):
                sl = slice(i, i + self.batch)
                a = Ah[sl].requires_grad_(True)  # a leaf view: no copy of the activations
                kl = self._kl(self.head(a), sl)
                # Gradient w.r.t. the activations only: the model's parameters are not accumulated into.
                (g,) = torch.autograd.grad(kl.sum(), a)
                grads.append(g)
                out.append(kl.detach())
        grad = grads[0] if len(grads) == 1 else torch.cat(grads)
        if self.pooled:  # the pooled gradient, spread evenly over the positions
            S = self.shape[1] * self.shape[2]
            return torch.cat(out), Grad(grad.reshape(self.shape[0], -1) / S, S)
        return torch.cat(out), Grad(grad.reshape(-1, self.shape[-1]), 1)


class Grad:
    """``∂ Σ_i KL_i / ∂Â`` ``[n, C]`` (rows: ``N`` images × ``S`` positions), kept as ``G [N·S/s, C]`` with
    each row repeated ``s`` times: ``s = S`` when the term pools first (every position of an image has the
    same gradient), ``s = 1`` otherwise. The solvers need it only through ``[k, ·]`` products.
    """

    __slots__ = ("G", "s")

    def __init__(self, G: torch.Tensor, s: int) -> None:
        self.G, self.s = G, int(s)

    def dense(self) -> torch.Tensor:
        """``[n, C]`` the gradient itself."""
        return self.G if self.s == 1 else self.G.repeat_interleave(self.s, 0)

    def left(self, W: torch.Tensor) -> torch.Tensor:
        """``W @ gradᵀ``: ``[k, C] → [k, n]``."""
        out = W @ self.G.T
        return out if self.s == 1 else out.repeat_interleave(self.s, 1)

    def right(self, Ut: torch.Tensor) -> torch.Tensor:
        """``Ut @ grad``: ``[k, n] → [k, C]``."""
        if self.s == 1:
            return Ut @ self.G
        return Ut.reshape(Ut.shape[0], -1, self.s).sum(2) @ self.G


def _pools_first(head: Head, shape: tuple[int, ...]) -> bool:
    """Whether ``head`` (a bound ``ModelSplit.h``) reads ``[N, h, w, C]`` activations through their mean over
    positions; False for any other callable or shape (the head then sees every position)."""
    split = getattr(head, "__self__", None)
    check = getattr(split, "pools_first", None)
    return len(shape) == 4 and callable(check) and bool(check())


def face_objective(
    A: torch.Tensor,
    U: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    kl_weight: float,
    *,
    batch_images: int = 256,
) -> dict[str, float]:
    """FACE's objective ``MSE + λ·KL̄`` of a factorisation (the scale of the module docstring).

    Parameters
    ----------
    A : Tensor ``[N, *S, C]``
        Activations.
    U : Tensor ``[N, *S, k]``
        Coefficients.
    W : Tensor ``[k, C]``
        Concept bank.
    head : callable
        ``[B, *S, C] → [B, K]``.
    kl_weight : float
        ``λ``.
    batch_images : int
        Images per head call.

    Returns
    -------
    dict
        ``mse`` (mean over entries of ``(A − UW)²``), ``kl`` (mean over images), ``total``.
    """
    A_hat = U @ W
    mse = float((A - A_hat).to(torch.float64).square().mean())
    kl = float(KLTerm(head, A, batch_images).value(A_hat).mean())
    return {"mse": mse, "kl": kl, "total": mse + float(kl_weight) * kl}



class _Point:
    """The KL state at the current iterate: per-image KL ``[N]``, ``∂ΣKL/∂Â`` (a :class:`Grad`, None where
    no gradient was taken) and ``Â`` itself ``[n, C]``."""

    __slots__ = ("kl", "grad", "A_hat")

    def __init__(self, kl: torch.Tensor, grad: Grad | None, A_hat: torch.Tensor) -> None:
        self.kl = kl
        self.grad = grad
        self.A_hat = A_hat


def _prox_step(
    X: torch.Tensor,
    Ut: torch.Tensor,
    W: torch.Tensor,
    block: str,
    term: KLTerm,
    mu: float,
    pt: _Point,
    L: float,
    sweeps: int,
    floor: float,
) -> tuple[torch.Tensor, _Point, float, bool]:
    """One monotone forward–backward step on ``Uᵀ`` (``block="u"``) or ``W`` (``block="w"``).

    Returns the new block, the KL state there, the accepted ``L`` and whether the step was accepted
    (when no ``L`` works within the backtracking budget the block is returned unchanged).
    """
    # The KL gradient enters only through [k, ·] products, so μ scales those, not the [n, C] arrays.
    grad = cast(Grad, pt.grad)
    if block == "u":
        Q0, gX, X0 = W @ W.T, mu * grad.left(W), Ut  # X0 = Uᵀ [k, n]
        P0 = W @ X.T - gX
    else:
        Q0, gX, X0 = Ut @ Ut.T, mu * grad.right(Ut), W  # X0 = W [k, C]
        P0 = Ut @ X - gX
    eye = torch.eye(Q0.shape[0], dtype=Q0.dtype, device=Q0.device)
    f0 = mu * float(pt.kl.sum())
    g64 = gX.to(torch.float64)
    for _ in range(_MAX_BACKTRACK):
        Xn = hals(P0 + L * X0, Q0 + L * eye, X0, sweeps, floor=floor, delta=DELTA)
        D = (Xn - X0).to(torch.float64)
        d2 = float(D.square().sum())
        if d2 == 0.0:
            return X0, pt, L, False
        codes, bank = (Xn, W) if block == "u" else (Ut, Xn)
        A_new = codes.T @ bank
        kl_new, g_new = term.value_and_grad_op(A_new, codes, bank)
        f_new = mu * float(kl_new.sum())
        lin = float((g64 * D).sum())
        excess = f_new - f0 - lin  # ≤ (L/2)‖D‖² is the majorisation we need
        if excess <= 0.5 * L * d2 + _SLACK * (abs(f0) + abs(lin) + 1e-30):
            return Xn, _Point(kl_new, g_new, A_new), L, True
        # The secant curvature along D, doubled: the next trial usually passes at once.
        L = max(2.0 * L, 4.0 * excess / d2)
    return X0, pt, L, False



def kl_code_steps(
    X: torch.Tensor, Ut: torch.Tensor, W: torch.Tensor, term: KLTerm, mu: float, steps: int, sweeps: int
) -> tuple[torch.Tensor, _Point]:
    """``steps`` monotone forward–backward steps on the codes ``Uᵀ [k, n]`` with the bank ``W`` frozen.

    The fit's ``U`` step, shared by :meth:`FACE.encode <conceptlens.decompose.face.FACE.encode>` (opt-in
    KL steps after the NNLS codes) and the mini-batch fit (each batch's codes); stops early when a step
    finds no descent.

    Parameters
    ----------
    X : Tensor ``[n, C]``
        The rows of the images ``term`` covers.
    Ut : Tensor ``[k, n]``
        Starting codes (the NNLS codes).
    W : Tensor ``[k, C]``
    term : KLTerm
    mu : float
        The KL's weight ``μ``.
    steps : int
    sweeps : int
        HALS sweeps per step.

    Returns
    -------
    Ut : Tensor ``[k, n]``
    point : _Point
        The per-image KL ``[N]``, its gradient (:class:`Grad`) and ``Â`` at the returned codes.
    """
    A_hat = Ut.T @ W
    pt, L = _Point(*term.value_and_grad_op(A_hat, Ut, W), A_hat), 0.0
    for _ in range(steps):
        Ut, pt, L, ok = _prox_step(X, Ut, W, "u", term, mu, pt, L, sweeps, 0.0)
        if not ok:
            break
        L *= 0.5
    return Ut, pt
