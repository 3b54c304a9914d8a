"""FACE by mini-batch passes: the KL-regularised NMF fitted from a store, batch by batch of whole images.

Notation as in :mod:`conceptlens.decompose.face`: ``A [N, *S, C]`` (``P = |S|`` rows per image,
``n = N·P`` rows), ``W [k, C]``, ``U`` the codes, ``p_i = softmax h(A_i)`` (from the reference logits, e.g.
the ones a streamed extraction kept, or from ``h`` on each batch), ``μ = λ·P·C/2`` the KL's weight per image
in ``f(U, W) = ½‖A − U W‖²_F + μ Σ_i KL(p_i ‖ softmax h(U_i W))``.

The KL couples an image's positions and only those, so the codes ``U`` are solved per batch of whole
images with the bank frozen; the bank needs only ``k × C`` statistics of them. One *pass* at a bank ``W``,
batch by batch:

1. codes: ``code_steps`` monotone forward–backward steps on the batch's FACE objective
   (:func:`~conceptlens.decompose._face_kl.kl_code_steps`, the fit's ``U`` step), from the batch's codes of
   the last accepted pass (``warm_codes``, the default: ``2·n·k`` floats are kept, ``2k/C`` of the
   activations, and the explainer keeps the codes after the fit anyway) or from NMF's NNLS codes
   (``warm_codes=False``: memory ``O(batch + k·C)``; the codes are then a function of the bank, ``U*(W)``,
   and at larger ``λ`` about 10 steps per pass are needed to reach the warm fit's objective: measured on
   the toy world of the tests, λ = 0.5: 0.009454 with 5 steps, 0.009330 with 10, warm with 1: 0.009346;
   the in-memory solver: 0.009398);
2. statistics (float64): ``UᵀU [k, k]``, ``UᵀA [k, C]``, ``G = Uᵀ ∂ΣKL/∂Â [k, C]`` (the KL's gradient in
   ``W`` at those codes), ``‖A − UW‖²`` and ``Σ KL_i``.

The bank then takes the fit's ``W`` step on those statistics (Frobenius part exact, KL linearised,
``(L/2)‖W − W₀‖²`` added: the non-negative quadratic HALS solves). The next pass evaluates the objective
at the new bank (with its codes stepped from the accepted ones, each step monotone); a bank whose pass
does not lower it is rejected (the previous bank, codes and statistics come back, ``L`` grows from the
secant curvature, the step is redone), so the accepted objectives never increase. The start
is the mini-batch NMF of the same rows (:meth:`NMF._fit_online <conceptlens.decompose.nmf.NMF>`) with the
same batch size. Batches are whole images, in order, the same from a tensor or a store
(:class:`~conceptlens.decompose._image_stream.RowSource`), so both give the same bank.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from conceptlens.decompose._face_kl import Head, KLTerm, check_head, kl_code_steps
from conceptlens.decompose._image_stream import RowSource
from conceptlens.decompose._nmf_encode import nnls_codes
from conceptlens.decompose._nmf_solvers import hals, normalise_rows, sweep_budget
from conceptlens.decompose._nmf_tuning import DELTA, FLOOR
from conceptlens.decompose.nmf import NMF
from conceptlens.errors import ActivationError

__all__ = ["PassStats", "MinibatchFACE", "batch_images_for", "fit_minibatch", "minibatch_codes"]

#: Rejected banks in a row after which the fit stops (no step of any curvature lowers the objective: the
#: codes' own inexactness is all that is left).
_MAX_REJECT = 8


def batch_images_for(batch_rows: int, per_image: int) -> int:
    """Whole images per batch: ``batch_rows`` rows rounded down to images, at least one."""
    return max(int(batch_rows) // max(per_image, 1), 1)


@dataclass
class PassStats:
    """What one pass at a bank leaves: the statistics of the ``W`` step and the objective's parts.

    ``S = UᵀU [k, k]``, ``R = UᵀA [k, C]``, ``G = Uᵀ ∂ΣKL/∂Â [k, C]`` (float64); ``err2 = ‖A − UW‖²``,
    ``kl = Σ_i KL_i``; ``f = ½ err2 + μ kl`` (the solver's scale).
    """

    S: torch.Tensor
    R: torch.Tensor
    G: torch.Tensor
    err2: float
    kl: float
    f: float


class MinibatchFACE:
    """The mini-batch fit's passes over one source (see the module docstring).

    Parameters
    ----------
    src : RowSource
        The activations, read in batches of ``images`` whole images.
    head : callable
        ``[B, *S, C] → [B, K]``.
    logits : Tensor ``[N, K]`` or None
        Reference logits ``h(A_i)``; None: computed from each batch with ``head``.
    kl_weight : float
        ``λ``.
    images, code_steps, batch_images : int
        Images per batch, KL steps of each batch's codes, images per head call.
    warm : bool
        Keep every row's codes between passes (``[k, n]``, twice: the accepted pass's and the current
        one's) and start each pass's code steps from them; False: from the NNLS codes every pass.
    """

    def __init__(self, src: RowSource, head: Head, logits: torch.Tensor | None, kl_weight: float,
                 images: int, code_steps: int, batch_images: int, warm: bool = False) -> None:
        if logits is not None and (logits.ndim != 2 or logits.shape[0] != src.n_images):
            raise ActivationError(f"logits must be [N, K] with one row per image (N = {src.n_images}), got "
                                  f"{list(logits.shape)}; pass the logits of the images the rows came from")
        self.src, self.head, self.logits = src, head, logits
        self.images, self.code_steps, self.batch_images = images, code_steps, batch_images
        self.lam = float(kl_weight)
        self.mu = self.lam * src.per_image * src.n_channels / 2.0
        self.normA2 = 0.0
        self.warm = warm
        self.U_acc: torch.Tensor | None = None  # [k, n] the accepted pass's codes (warm only)
        self.U_pass: torch.Tensor | None = None  # [k, n] the last pass's codes

    def _term(self, i: int, a: torch.Tensor) -> KLTerm:
        if self.logits is None:
            return KLTerm(self.head, a, self.batch_images)
        lg = self.logits[i : i + a.shape[0]].to(a.device)
        return KLTerm.from_logits(self.head, lg, tuple(a.shape), self.batch_images)

    def codes(self, i: int, a: torch.Tensor, W: torch.Tensor,
              start: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Codes ``Uᵀ [k, b·P]`` of the batch ``a [b, *S, C]`` (first image ``i``) and the KL state there,
        from ``start [k, b·P]`` (None: the NNLS codes)."""
        X = a.reshape(-1, a.shape[-1])
        term = self._term(i, a)
        steps = self.code_steps if self.mu > 0 else 0
        Ut = nnls_codes(X, W).T.contiguous() if start is None or steps == 0 else start
        sweeps = max(sweep_budget(X.shape[0], X.shape[1], W.shape[0])[0], 1)
        return kl_code_steps(X, Ut, W, term, self.mu, steps, sweeps)

    def batches(self, W: torch.Tensor) -> Any:
        """``(i, a, X)`` per batch: first image, ``[b, *S, C]`` on the bank's device and dtype, its rows."""
        for i, a in self.src.images(self.images):
            a = a.to(device=W.device, dtype=W.dtype)
            yield i, a, a.reshape(-1, a.shape[-1])

    def run_pass(self, W: torch.Tensor) -> PassStats:
        """One pass at ``W [k, C]``: every batch's codes, then the statistics of the ``W`` step."""
        k, C = W.shape
        f64 = torch.float64
        S = torch.zeros(k, k, dtype=f64, device=W.device)
        R = torch.zeros(k, C, dtype=f64, device=W.device)
        G = torch.zeros(k, C, dtype=f64, device=W.device)
        err2 = torch.zeros((), dtype=f64, device=W.device)
        kl = torch.zeros((), dtype=f64, device=W.device)
        U_new = torch.empty(k, self.src.n_rows, dtype=W.dtype, device=W.device) if self.warm else None
        for i, a, X in self.batches(W):
            r0, r1 = i * self.src.per_image, i * self.src.per_image + X.shape[0]
            start = None if self.U_acc is None else self.U_acc[:, r0:r1]
            Ut, pt = self.codes(i, a, W, start)
            if U_new is not None:
                U_new[:, r0:r1] = Ut
            S += (Ut @ Ut.T).to(f64)
            R += (Ut @ X).to(f64)
            if self.mu > 0:
                G += pt.grad.right(Ut).to(f64)
            # the residual itself (not from the Gram products): acceptance compares objectives closely
            err2 += torch.linalg.vector_norm(X - pt.A_hat, dtype=f64) ** 2
            kl += pt.kl.sum()
        e, q = float(err2), float(kl)
        self.U_pass = U_new
        return PassStats(S=S, R=R, G=G, err2=e, kl=q, f=0.5 * e + self.mu * q)

    def w_step(self, st: PassStats, W0: torch.Tensor, L: float, sweeps: int) -> torch.Tensor:
        """The fit's ``W`` step from a pass's statistics at ``W0``, curvature ``L``."""
        dt = W0.dtype
        eye = torch.eye(W0.shape[0], dtype=dt, device=W0.device)
        P = (st.R - self.mu * st.G).to(dt) + L * W0
        return hals(P, st.S.to(dt) + L * eye, W0, sweeps, floor=FLOOR, delta=DELTA)

    def secant(self, st: PassStats, W0: torch.Tensor, W1: torch.Tensor, f1: float, L: float) -> float:
        """A larger curvature after ``W1`` (objective ``f1``) failed: the excess of ``f1`` over the step's
        linear-KL model, over ``‖W1 − W0‖²/4``, at least ``2L`` and a small multiple of the Gram's scale."""
        W0d, W1d = W0.double(), W1.double()
        quad = 0.5 * (self.normA2 - 2.0 * float((st.R * W1d).sum()) + float((st.S * (W1d @ W1d.T)).sum()))
        model = quad + self.mu * (st.kl + float((st.G * (W1d - W0d)).sum()))
        d2 = float((W1d - W0d).square().sum())
        floor = 1e-3 * float(st.S.diagonal().mean())
        return max(2.0 * L, 4.0 * (f1 - model) / d2 if d2 > 0 else 0.0, floor, 1e-30)


def fit_minibatch(
    A: Any,
    *,
    n_concepts: int,
    seed: int,
    head: Head | None,
    kl_weight: float,
    batch_size: int,
    code_steps: int,
    batch_images: int,
    warm_codes: bool,
    max_iter: int,
    tol: float,
    image_shape: tuple[int, ...] | None,
    logits: torch.Tensor | None,
    layer_name: str | None,
    deadline: float | None,
    record: Callable[[int, float, float, float], None],
    bar: Any,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """FACE from a tensor or a store by mini-batch passes (module docstring).

    Parameters
    ----------
    A : Tensor ``[N, *S, C]`` or a store of its rows
    n_concepts, seed, head, kl_weight, batch_size, code_steps, batch_images, warm_codes, max_iter, tol
        The estimator's parameters (``batch_size`` in rows, rounded down to whole images).
    image_shape : tuple of int or None
        ``S`` for a store (None: one row per image).
    logits : Tensor ``[N, K]`` or None
        Reference logits (None: from ``head`` on each batch).
    layer_name : str or None
        For error messages.
    deadline : float or None
        ``time.perf_counter()`` value after which no further pass starts.
    record : callable
        ``record(iter, mse, kl, total)`` for each accepted bank, in the estimator's scale (``mse`` a mean
        over the ``n·C`` entries, ``kl`` over the ``N`` images, ``total = mse + λ·kl``).
    bar
        A tqdm bar (updated once per pass).

    Returns
    -------
    W : Tensor ``[k, C]``
        The bank (unit rows, entries at the floor set to zero).
    info : dict
        ``n_iter``, ``rejected``, ``err2``, ``kl``, ``normA2``, ``n_rows``, ``n_images``; ``codes``: the
        accepted codes ``Uᵀ [k, n]`` (``warm_codes``; else None).
    """
    src = RowSource(A, image_shape)
    images = batch_images_for(batch_size, src.per_image)
    nmf = NMF(n_concepts=n_concepts, seed=seed, batch_size=images * src.per_image)
    W = nmf.fit(A, layer_name).components_
    _, first = next(src.images(min(2, src.n_images)))
    check_head(head, first.to(device=W.device, dtype=W.dtype))
    k, C = W.shape
    info: dict[str, Any] = {"n_iter": 0, "rejected": 0, "err2": 0.0, "kl": 0.0, "normA2": 0.0,
                            "n_rows": src.n_rows, "n_images": src.n_images, "codes": None}
    if float(W.abs().max()) == 0.0:  # all-zero activations: NMF warned
        return W, info
    run = MinibatchFACE(src, head, logits, kl_weight, images, code_steps, batch_images,  # type: ignore[arg-type]
                        warm_codes)
    # a zero row of the NMF bank (a dead concept) is lifted to the floor, as in the in-memory fit
    W = normalise_rows(torch.ones(k, 1, dtype=W.dtype, device=W.device), W.clamp_min(FLOOR))[1]
    run.normA2 = float(sum(float(torch.linalg.vector_norm(X, dtype=torch.float64)) ** 2
                           for _, _, X in run.batches(W)))
    sweeps_w = sweep_budget(src.n_rows, C, k)[1]
    nC, N = src.n_rows * C, src.n_images

    def scaled(it: int, st: PassStats) -> None:
        record(it, st.err2 / nC, st.kl / N, st.err2 / nC + float(kl_weight) * st.kl / N)

    acc_W, acc = W, run.run_pass(W)
    run.U_acc = run.U_pass
    scaled(0, acc)
    L, rejected, it = 0.0, 0, 0
    for it in range(1, max_iter + 1):
        if deadline is not None and time.perf_counter() >= deadline:
            it -= 1
            break
        W_new = run.w_step(acc, acc_W, L, sweeps_w)
        W_new = normalise_rows(torch.ones(k, 1, dtype=W.dtype, device=W.device), W_new)[1]
        st = run.run_pass(W_new)
        bar.update(1)
        if st.f <= acc.f:
            drop = acc.f - st.f
            acc_W, acc, rejected = W_new, st, 0
            run.U_acc = run.U_pass
            scaled(it, st)
            bar.set_postfix(objective=f"{st.f:.6g}", refresh=False)
            # let L shrink again, more slowly than the in-memory solver's 0.5: a rejected bank costs a whole
            # pass here (toy world, 20 passes: 0.5 → 5-6 rejected, 0.8 → 2-4, objective within ±0.7 %)
            L *= 0.8
            if drop <= tol * abs(st.f + drop):
                break
        else:
            info["rejected"] += 1
            rejected += 1
            L = run.secant(acc, acc_W, W_new, st.f, L)
            if rejected >= _MAX_REJECT:
                break
    W = torch.where(acc_W <= 1e3 * FLOOR, torch.zeros_like(acc_W), acc_W)
    U = run.U_acc if run.U_acc is not None else torch.ones(k, 1, dtype=W.dtype, device=W.device)
    U, W = normalise_rows(U, W)
    info.update(n_iter=it, err2=acc.err2, kl=acc.kl, normA2=run.normA2, codes=U if run.warm else None)
    return W, info


def minibatch_codes(A: torch.Tensor, W: torch.Tensor, *, head: Head, kl_weight: float, batch_size: int,
                    code_steps: int, batch_images: int, logits: torch.Tensor | None = None) -> torch.Tensor:
    """The codes ``U [N, *S, k]`` that the mini-batch fit solves at the bank ``W [k, C]`` for
    ``A [N, *S, C]`` in memory (its ``fit_encode``); ``logits [N, K]`` as in :func:`fit_minibatch`."""
    src = RowSource(A)
    run = MinibatchFACE(src, head, logits, kl_weight, batch_images_for(batch_size, src.per_image), code_steps,
                        batch_images)
    parts = [run.codes(i, a, W)[0].T for i, a, _ in run.batches(W)]
    return torch.cat(parts).reshape(*A.shape[:-1], W.shape[0])
