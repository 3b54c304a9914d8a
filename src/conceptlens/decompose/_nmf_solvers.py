"""NMF's solvers: small pure functions with one signature, the stopping rule, the sweep budget.

Notation (as in :mod:`conceptlens.decompose.nmf`):

=====  ==========  ==============================================================
``A``  ``[n, C]``  activations, one row per spatial position or image
``W``  ``[k, C]``  the concept bank
``U``  ``[n, k]``  non-negative codes, ``A ≈ U @ W``
``X``  ``[k, m]``  the block being solved: ``Uᵀ`` (``m = n``) or ``W`` (``m = C``)
``Q``  ``[k, k]``  its Gram matrix: ``W Wᵀ`` or ``Uᵀ U``
``P``  ``[k, m]``  its cross term: ``W Aᵀ`` or ``Uᵀ A``
=====  ==========  ==============================================================

Both halves of an alternating NMF step are the same non-negative quadratic problem in a *row-block*
form, ``min_{X ≥ 0} ½ tr(Xᵀ Q X) − tr(Pᵀ X)``, and every solver here takes ``(P, Q, X, sweeps, *, floor,
delta)`` and returns the new ``X`` (:class:`Solver`; :data:`SOLVERS` by name). Keeping ``U`` transposed
makes every HALS row update a contiguous, vectorised operation over ``m``. Encoding
(:func:`conceptlens.decompose._nmf_encode.nnls_codes`) is the same problem with the bank frozen, solved
to a KKT tolerance with an exact finish: a non-negative least-squares problem, never an unconstrained
pseudo-inverse. The constants are in
:mod:`conceptlens.decompose._nmf_tuning`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from conceptlens.decompose._nmf_tuning import (
    ALPHA,
    MAX_SWEEPS,
    OVERHEAD,
    STOP_AHEAD,
    STOP_WINDOW,
)

__all__ = ["Solver", "SOLVERS", "hals", "mu", "converged", "sweep_budget", "normalise_rows"]


class Solver(Protocol):
    """The signature shared by every solver (see :func:`hals`)."""

    def __call__(
        self,
        P: torch.Tensor,
        Q: torch.Tensor,
        X: torch.Tensor,
        sweeps: int,
        *,
        floor: float = 0.0,
        delta: float = 0.0,
    ) -> torch.Tensor: ...


def hals(
    P: torch.Tensor,
    Q: torch.Tensor,
    X: torch.Tensor,
    sweeps: int,
    *,
    floor: float = 0.0,
    delta: float = 0.0,
) -> torch.Tensor:
    """Hierarchical alternating least squares sweeps on ``min_{X≥floor} ½tr(XᵀQX) − tr(PᵀX)``.

    Each sweep updates the rows of ``X`` one at a time, exactly minimising over that row with the
    others fixed: ``X_j ← max(floor, X_j + (P_j − Q_j X) / Q_jj)``.

    Parameters
    ----------
    P : Tensor ``[k, m]``
        Cross term (``W Aᵀ`` when updating ``Uᵀ``; ``Uᵀ A`` when updating ``W``).
    Q : Tensor ``[k, k]``
        Gram matrix (``W Wᵀ`` or ``Uᵀ U``), symmetric positive semi-definite.
    X : Tensor ``[k, m]``
        Current iterate (not modified).
    sweeps : int
        Maximum number of sweeps over the ``k`` rows.
    floor : float
        Lower bound for entries (``0`` for an exact NNLS; a tiny positive value while fitting).
    delta : float
        Stop early once a sweep changes ``X`` by at most ``delta`` times the change of the first sweep
        (Frobenius norms); ``0`` runs all sweeps.

    Returns
    -------
    Tensor ``[k, m]``
        The updated iterate.
    """
    X = X.clone()
    sweep = _hals_sweeper(P, Q, X, floor)
    first = None
    for _ in range(max(int(sweeps), 0)):
        old = X.clone() if delta > 0 else None
        sweep()
        if old is not None:
            change = float(torch.linalg.vector_norm(X - old))
            if first is None:
                first = change
            if change <= delta * first:
                break
    return X


def _gram_diagonal(Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(live, dsafe)`` of a Gram matrix ``Q [k, k]``: the rows with a positive diagonal, and the diagonal
    with 1 where it is not positive (such rows have no quadratic term: HALS leaves them)."""
    d = torch.diagonal(Q)
    live = d > 0
    return live, torch.where(live, d, torch.ones_like(d))


def _hals_sweeper(
    P: torch.Tensor, Q: torch.Tensor, X: torch.Tensor, floor: float, scaled: bool = False
) -> Any:
    """A function that runs one HALS sweep on ``X [k, m]`` *in place* (see :func:`hals`).

    ``scaled``: ``P`` is already divided row-wise by ``Q``'s diagonal (where it is positive).
    """
    live, dsafe = _gram_diagonal(Q)
    Pn = P if scaled else P / dsafe[:, None]
    Qn = Q / dsafe[:, None]
    # Zeroing the diagonal folds "X_j + …" into the product: X_j ← max(floor, Pn_j − Qn0_j X).
    Qn.fill_diagonal_(0.0)
    # Views built once: the inner loop is then two kernels per row, written in place into X.
    XT = X.T
    Ps, Qs, Xs = Pn.unbind(0), Qn.unbind(0), X.unbind(0)
    rows = [(Ps[j], Qs[j], Xs[j]) for j, ok in enumerate(live.tolist()) if ok]
    buf = torch.empty_like(X[0])

    def sweep() -> None:
        for p, q, x in rows:
            torch.addmv(p, XT, q, alpha=-1.0, out=buf)
            torch.clamp_min(buf, floor, out=x)

    return sweep


def mu(
    P: torch.Tensor,
    Q: torch.Tensor,
    X: torch.Tensor,
    sweeps: int,
    *,
    floor: float = 0.0,
    delta: float = 0.0,
) -> torch.Tensor:
    """Lee & Seung multiplicative updates ``X ← X ⊙ P / (Q X)``; same signature as :func:`hals`.

    Slower than HALS per unit of progress; kept as a reference solver. Entries that are exactly zero
    stay zero, so start from a strictly positive ``X``.

    Parameters
    ----------
    P, Q, X, sweeps, floor, delta
        As in :func:`hals` (``P`` must be non-negative).

    Returns
    -------
    Tensor ``[k, m]``
        The updated iterate.
    """
    X = X.clone()
    tiny = torch.finfo(X.dtype).tiny
    first = None
    for _ in range(max(int(sweeps), 0)):
        new = (X * P / (Q @ X).clamp_min(tiny)).clamp_min_(floor)
        if delta > 0:
            change = float(torch.linalg.vector_norm(new - X))
            first = change if first is None else first
            X = new
            if change <= delta * first:
                break
        else:
            X = new
    return X


#: Solvers by name, all with the signature of :func:`hals`.
SOLVERS: dict[str, Solver] = {"hals": hals, "mu": mu}


def converged(history: list[float], tol: float) -> bool:
    """The outer stopping rule, on the relative errors ``history`` of the iterations so far.

    Stop when the last iteration improved the error by less than ``tol`` (relative), or when the
    improvement still to come, extrapolated from the last decreases, is below ``STOP_AHEAD · tol``. The
    extrapolation assumes the decreases shrink geometrically with the largest ratio ``r`` seen among the
    last ``STOP_WINDOW`` of them: what remains is ``d·r/(1 − r)`` for a last decrease ``d``. It is
    trusted only while the ratios do not grow (convergence at least geometric): NMF runs often slow
    down, stall and speed up again, and there a geometric model would stop far too early, so such runs
    fall back to the first test, as does any run with a non-positive decrease in the window.

    Parameters
    ----------
    history : list of float
        Relative errors ``‖A − UW‖_F / ‖A‖_F`` after each outer iteration, oldest first.
    tol : float
        The estimator's ``tol``; ``0`` never stops.

    Returns
    -------
    bool
        True when the fit should stop after the last entry of ``history``.
    """
    if tol <= 0 or len(history) < 2:
        return False
    d = [(a - b) / a if a > 0 else 0.0 for a, b in zip(history[:-1], history[1:], strict=True)]
    if d[-1] < tol:
        return True
    if len(d) < STOP_WINDOW:
        return False
    last = d[-STOP_WINDOW:]
    if min(last) <= 0:
        return False
    ratios = [b / a for a, b in zip(last[:-1], last[1:], strict=True)]
    # ratios that grow (beyond rounding) mean the convergence is slowing down: no extrapolation
    if any(b > a * (1 + 1e-6) for a, b in zip(ratios[:-1], ratios[1:], strict=True)):
        return False
    r = max(ratios)
    return r < 1 and last[-1] * r / (1 - r) < STOP_AHEAD * tol


def sweep_budget(n: int, C: int, k: int, density: float = 1.0) -> tuple[int, int]:
    """Maximum inner sweeps of a fit's U half-step and W half-step: Gillis & Glineur's ``1 + α·ρ``.

    ``ρ = 1 + (cost of P and Q) / (cost of one sweep)``, in flops, kernel launches included (at most
    ``MAX_SWEEPS``): a half-step whose products are expensive next to a sweep gets more sweeps.

    Parameters
    ----------
    n, C, k : int
        Rows, channels and concepts of the problem.
    density : float
        Fraction of non-zeros of ``A`` when its products are sparse (which makes them cheaper); ``1.0``
        for dense products.

    Returns
    -------
    (sweeps_u, sweeps_w) : tuple of int
        Each in ``[1, MAX_SWEEPS]``.
    """
    # A sweep runs two kernels per row, whose fixed launch cost (~OVERHEAD flops) dominates when m·k is
    # small. A sparse product streams its index arrays too: count it at twice the flops of its non-zeros.
    cross = 2 * n * C * k * min(1.0, 2.0 * density)
    prod_u = cross + 2 * C * k * k
    prod_w = cross + 2 * n * k * k
    rho_u = 1 + prod_u / (k * (2 * n * k + OVERHEAD))
    rho_w = 1 + prod_w / (k * (2 * C * k + OVERHEAD))
    return min(1 + int(ALPHA * rho_u), MAX_SWEEPS), min(1 + int(ALPHA * rho_w), MAX_SWEEPS)


def normalise_rows(Ut: torch.Tensor, W: torch.Tensor, *more: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rescale so that every row of ``W`` has unit norm, moving the scale into ``Uᵀ`` (UW unchanged).

    Tensors in ``more`` (``[k, …]``, linear in ``Uᵀ``, such as ``Uᵀ A``) are scaled like ``Uᵀ``.

    Parameters
    ----------
    Ut : Tensor ``[k, n]``
    W : Tensor ``[k, C]``
    *more : Tensors ``[k, …]``

    Returns
    -------
    tuple of Tensors
        ``(Ut', W', *more')`` with the same shapes; rows of ``W'`` with norm 0 are left as they are.
    """
    norms = torch.linalg.vector_norm(W, dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))[:, None]
    return (Ut * norms, W / norms, *(m * norms for m in more))
