"""NMF's encoder: non-negative least-squares codes for a frozen bank, solved to a per-row KKT tolerance.

Notation (as in :mod:`conceptlens.decompose._nmf_solvers`): ``A [n, C]`` the rows to encode, ``W [k, C]``
the bank, ``Q = W Wᵀ [k, k]``, and for a block of ``m`` rows ``P = W Aᵀ [k, m]`` and ``X = Uᵀ [k, m]``.
Each column ``x`` of ``X`` (one row ``a`` of ``A``, with ``p = W a``) is its own problem::

    min_{x ≥ 0}  f(x) = ½ ‖a − Wᵀ x‖²   ⇔   min_{x ≥ 0}  ½ xᵀ Q x − pᵀ x,      gradient  g = Q x − p.

**Stopping rule (per row, independent of the other rows).** ``x`` is optimal iff the natural residual
``r = x − max(0, x − D⁻¹g) = min(x, D⁻¹g)`` is zero (``D = diag Q``: ``r`` is minus the step a Jacobi
HALS sweep would take; on the support it is the scaled gradient, off it the part of the gradient that
points into the feasible set). Where ``x`` has the optimal support, the objective's excess is
``½ g_Sᵀ Q_SS⁻¹ g_S ≤ ‖D r‖² / (2 λ_min(Q))``, and ``‖p‖² ≤ λ_max(Q) ‖a‖²``; so the test

    ``‖D r‖ ≤ τ ‖p‖``  with  ``τ = √(ε / κ)``,  ``κ = λ_max(Q) / λ_min(Q)``

bounds the excess by ``½ ε ‖a‖²`` for every row at its own scale (``ε`` by dtype:
``ENCODE_EXCESS``; ``λ_min`` is the smallest non-zero eigenvalue, see :func:`kkt_tolerance`). An
ill-conditioned bank asks for a small ``τ``, which is what makes such rows fall through to the exact
finish rather than stop early. A row that passes leaves the sweeps at once, with the codes its next
projected step would zero set to zero (the residual tolerates them; the support must not). Every decision
is the row's own, so its codes do not depend on which other rows share its block (up to rounding: a
float32 product over one column and over many may differ in the last bit, which can move the check at
which an ill-conditioned row stops).

**The solve.** HALS sweeps (:func:`~conceptlens.decompose._nmf_solvers._hals_sweeper`) from the clipped
unconstrained solution: ``ENCODE_FULL`` sweeps, then a KKT check every ``ENCODE_CHECK`` sweeps; a row's
codes are taken at the check it passes (the block is compacted to the rows still running once they are
few). A row whose residual, falling at its last rate, would not pass within ``ENCODE_HALS_SWEEPS`` sweeps
(an ill-conditioned row, or one at the dtype's rounding floor) leaves for the **exact finish**: batched
block principal pivoting (Kim & Park, *Fast nonnegative matrix factorization: an active-set-like method
and comparisons*, SIAM J. Sci. Comput. 2011) started from the HALS support, on ``Q`` and ``P``
recomputed in float64 for those rows (a float32 Gram cannot resolve a near-collinear pair), which ends at
the exact NNLS solution (up to rounding), usually in one or two solves.

**Blocks.** Rows are solved in blocks of ``ENCODE_ELEMS / k`` (a block's products and codes stay in the
core's cache through its sweeps); with several threads on a CPU each block runs in a one-thread worker
(``_threads.one_thread_pool``), so the many small sweep kernels never wait at a barrier, and a block's
codes are bit for bit those of a one-thread encode.
"""

from __future__ import annotations

import math

import torch

from conceptlens._threads import one_thread_pool
from conceptlens.decompose._nmf_products import cross_product
from conceptlens.decompose._nmf_solvers import SOLVERS, _gram_diagonal, _hals_sweeper, mu
from conceptlens.decompose._nmf_tuning import (
    ENCODE_CHECK,
    ENCODE_COMPACT,
    ENCODE_DELTA,
    ENCODE_ELEMS,
    ENCODE_EXCESS,
    ENCODE_FULL,
    ENCODE_HALS_SWEEPS,
    ENCODE_MAX_SWEEPS,
    EXACT_MAX_ITER,
    EXACT_TOL,
)
from conceptlens.decompose.base import check_finite
from conceptlens.errors import ParameterError

__all__ = ["nnls_codes", "kkt_tolerance", "kkt_residual", "exact_nnls"]


def kkt_tolerance(Q: torch.Tensor, dtype: torch.dtype) -> float:
    """The relative KKT tolerance ``τ = √(ε / κ)`` of the stopping rule (see the module docstring).

    ``κ = λ_max / λ_min⁺`` over the bank's live rows (non-zero diagonal), where ``λ_min⁺`` is the smallest
    eigenvalue above ``k · eps(Q.dtype) · λ_max``: the gradient ``Q x − W a`` lies in ``Q``'s range, so a
    singular direction, such as a duplicated bank row, does not bound the excess. Pass ``Q`` in float64
    (as the encoder does): a float32 Gram blurs a near-collinear pair (κ ~ 1e7) into a duplicate.

    Parameters
    ----------
    Q : Tensor ``[k, k]``
        The bank's Gram matrix ``W Wᵀ`` (its dtype sets the resolution of "singular").
    dtype : torch.dtype
        The codes' dtype: picks ``ε`` (``ENCODE_EXCESS``; float64's for unknown types).

    Returns
    -------
    float
        ``τ`` (``1`` for a bank without live rows).
    """
    live = _gram_diagonal(Q)[0]
    ev = torch.linalg.eigvalsh(Q[live][:, live].double())
    top = float(ev[-1]) if ev.numel() else 0.0
    if top <= 0:
        return 1.0
    eps = torch.finfo(Q.dtype).eps if Q.dtype.is_floating_point else torch.finfo(torch.float64).eps
    low = float(ev[ev > ev.numel() * eps * top].min())
    return math.sqrt(ENCODE_EXCESS.get(dtype, ENCODE_EXCESS[torch.float64]) * low / top)


def kkt_residual(P: torch.Tensor, Q: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Per-column norms ``‖D r‖`` of the natural residual ``r = min(x, D⁻¹(Q x − p))`` (``D = diag Q``).

    Parameters
    ----------
    P : Tensor ``[k, m]``
        ``W Aᵀ``.
    Q : Tensor ``[k, k]``
        ``W Wᵀ``.
    X : Tensor ``[k, m]``
        Non-negative codes ``Uᵀ``.

    Returns
    -------
    Tensor ``[m]``
        Zero exactly where a column satisfies the KKT conditions of its NNLS problem.
    """
    d = _gram_diagonal(Q)[1][:, None]
    return torch.linalg.vector_norm(torch.minimum(X * d, Q @ X - P), dim=0)


def _nnls_hals(P: torch.Tensor, Q: torch.Tensor, X: torch.Tensor, tau: float) -> torch.Tensor:
    """HALS sweeps on the columns of ``X [k, m]`` (overwritten) until each passes the KKT test.

    A column's codes are taken (copied aside) at the check it passes, so they do not depend on the other
    columns; the block goes on being swept whole (cheaper than gathering it at every check) until at most
    ``ENCODE_COMPACT`` of it is still running, then the running columns are gathered into a smaller block.
    ``P [k, m]`` is a temporary of the caller's and is scaled in place by ``Q``'s diagonal (fresh 10 MB
    temporaries cost page faults on every call: one buffer serves every check). Returns the indices
    ``[r]`` of the columns that have not passed (for the exact finish).
    """
    live, d = _gram_diagonal(Q)
    thr = P.square().sum(0).mul_(tau * tau)  # [m]: (τ‖p‖)², per column (a column norm reduces slowly)
    P.div_(d[:, None])
    Qd = Q / d[:, None]  # the scaled gradient D⁻¹(Q x − p) = Qd x − P/d in one product
    # rows with no quadratic term (a zero row of W) have no gradient to test (their codes are 0)
    d2 = torch.where(live, d.square(), torch.zeros_like(d))
    sweep = _hals_sweeper(P, Q, X, 0.0, scaled=True)
    for _ in range(ENCODE_FULL):
        sweep()
    k, m = X.shape
    spare = torch.empty(k * m, dtype=X.dtype, device=X.device)
    idx = torch.arange(m, device=X.device)  # the columns of X held in Xa
    running = torch.ones(m, dtype=torch.bool, device=X.device)  # over Xa's columns
    prev = torch.full((m,), math.inf, dtype=X.dtype, device=X.device)  # ‖D r‖² at the last check
    taken: list[tuple[torch.Tensor, torch.Tensor]] = []  # (columns of X, their codes) as they left
    finish: list[torch.Tensor] = []  # columns of X for the exact finish
    Xa, Pa, done = X, P, ENCODE_FULL
    while True:
        w = Xa.shape[1]
        R = spare[: k * w].view(k, w)
        torch.addmm(Pa, Qd, Xa, beta=-1.0, out=R)
        torch.minimum(R, Xa, out=R)
        res = torch.mv(R.square_().T, d2)  # ‖D r‖² per column, one pass
        goal = thr.index_select(0, idx)
        fail = res > goal
        passed = (running & ~fail).nonzero().squeeze(1)
        if passed.numel():
            codes = Xa.index_select(1, passed)
            # a code the next projected step would zero (x ≤ its scaled gradient) is zeroed now: the
            # residual allows such small codes, but the support (the implicit maps' active set) does not
            grad = torch.addmm(Pa.index_select(1, passed), Qd, codes, beta=-1.0)
            taken.append((idx.index_select(0, passed), codes.masked_fill_(codes <= grad, 0.0)))
            running &= fail
        # a row whose residual, falling at its last rate, would not pass within the sweeps left (an
        # ill-conditioned row, or one at the dtype's rounding floor) goes to the exact finish now
        checks_left = max(ENCODE_HALS_SWEEPS - done, 0) / ENCODE_CHECK
        rate = (res / prev).clamp_max_(1.0)
        need = torch.log(res / goal) / -torch.log(rate)  # checks still needed (inf when stalled)
        stuck = (running & (need > checks_left)).nonzero().squeeze(1)
        if stuck.numel():
            cols = idx.index_select(0, stuck)
            taken.append((cols, Xa.index_select(1, stuck)))
            finish.append(cols)
            running.index_fill_(0, stuck, False)
        prev = res
        left = int(running.count_nonzero())
        if left == 0:
            break
        if left <= ENCODE_COMPACT * w:
            sel = running.nonzero().squeeze(1)
            idx, Xa, Pa = idx.index_select(0, sel), Xa.index_select(1, sel), Pa.index_select(1, sel)
            prev, running = prev.index_select(0, sel), torch.ones(left, dtype=torch.bool, device=X.device)
            sweep = _hals_sweeper(Pa, Q, Xa, 0.0, scaled=True)
        for _ in range(ENCODE_CHECK):
            sweep()
        done += ENCODE_CHECK
    for cols, codes in taken:
        X.index_copy_(1, cols, codes)
    return torch.cat(finish) if finish else idx[:0]


def exact_nnls(P: torch.Tensor, Q: torch.Tensor, passive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact NNLS solutions of the columns of ``P`` by batched block principal pivoting, in float64.

    Each column keeps a passive set ``F`` (its support) and solves ``Q_FF x_F = p_F`` (``x = 0`` off
    ``F``); entries with ``x_F < 0`` or with a negative gradient off ``F`` are infeasible and change sides:
    all of them while their count keeps falling (or for three tries after it last fell), else only the
    one of largest index (Kim & Park's backup rule, which makes the method finite). Every column is
    solved at once (one batched Cholesky per pivoting step); a column leaves once it is feasible.

    Parameters
    ----------
    P : Tensor ``[k, r]``
        ``W Aᵀ`` of the rows to solve.
    Q : Tensor ``[k, k]``
        ``W Wᵀ``.
    passive : Tensor ``[k, r]``, bool
        The starting supports (e.g. ``X > 0`` of an approximate solution).

    Returns
    -------
    X : Tensor ``[k, r]``, float64
        ``argmin_{x≥0} ½xᵀQx − pᵀx`` of each column that converged (``≥ 0``); zeros for the others.
    ok : Tensor ``[r]``, bool
        Which columns reached a feasible (optimal) support within ``EXACT_MAX_ITER`` steps.
    """
    k, r = P.shape
    Q = Q.double()
    Pt = P.double().T.contiguous()  # [r, k]
    F = passive.T & (Q.diagonal() > 0)  # [r, k]: a zero bank row never enters a support
    out = torch.zeros(r, k, dtype=torch.float64, device=P.device)
    ok = torch.zeros(r, dtype=torch.bool, device=P.device)
    act = torch.arange(r, device=P.device)
    ninf = torch.full((r,), k + 1, dtype=torch.long, device=P.device)
    tries = torch.full((r,), 3, dtype=torch.long, device=P.device)
    eye = torch.eye(k, dtype=torch.bool, device=P.device)
    order = torch.arange(1, k + 1, device=P.device)
    scale = Pt.square().sum(1).sqrt_()  # [r]: ‖p‖, each column's own scale
    for _ in range(EXACT_MAX_ITER):
        if act.numel() == 0:
            break
        f = F[act]
        x = _solve_on_support(Q, Pt[act], f)
        g = x @ Q - Pt[act]  # the gradient; zero (up to rounding) on F
        tol = EXACT_TOL * (scale[act] + torch.linalg.vector_norm(x, dim=1) * float(Q.diagonal().max()))
        bad = (f & (x < -EXACT_TOL * x.abs().amax(1, keepdim=True))) | (~f & (g < -tol[:, None]))
        cnt = bad.sum(1)
        fin = cnt == 0
        out[act[fin]] = x[fin].clamp_min(0.0)
        ok[act[fin]] = True
        if bool(fin.all()):
            break
        rest = act[~fin]
        bad, cnt = bad[~fin], cnt[~fin]
        better = cnt < ninf[rest]
        full = better | (tries[rest] >= 1)
        ninf[rest] = torch.where(better, cnt, ninf[rest])
        tries[rest] = torch.where(better, 3, torch.where(full, tries[rest] - 1, tries[rest]))
        last = (bad * order).argmax(1)  # the infeasible entry of largest index
        single = eye[last] & ~full[:, None]
        F[rest] ^= torch.where(full[:, None], bad, single)
        act = rest
    return out.T, ok


def _solve_on_support(Q: torch.Tensor, Pt: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``[b, k]``: ``x_F = Q_FF⁻¹ p_F``, zero off ``F``, for rows ``Pt [b, k]`` and supports ``f [b, k]``.

    The Gram of each support is completed by the identity off it (block diagonal), so one batched
    Cholesky serves every row; a singular ``Q_FF`` (duplicated bank rows) falls back to the
    pseudo-inverse's minimum-norm solution.
    """
    fm = f.to(Q.dtype)
    M = Q * (fm[:, :, None] * fm[:, None, :]) + torch.diag_embed(1.0 - fm)
    rhs = (Pt * fm)[:, :, None]
    L, info = torch.linalg.cholesky_ex(M)
    x = torch.cholesky_solve(rhs, L)[:, :, 0]
    bad = info != 0
    if bool(bad.any()):
        x[bad] = (torch.linalg.pinv(M[bad], hermitian=True) @ rhs[bad])[:, :, 0]
    return x * fm


class _Bank:
    """A frozen bank's products (``Q = W Wᵀ``, ``Q⁺``, ``W`` in float64, ``τ``) and the solve of one block."""

    def __init__(self, W: torch.Tensor, Q: torch.Tensor, Qinv: torch.Tensor, W64: torch.Tensor, tau: float,
                 solver: str) -> None:
        self.W, self.Q, self.Qinv, self.W64, self.tau, self.solver = W, Q, Qinv, W64, tau, solver
        self.live = _gram_diagonal(Q)[0]
        self.all_live = bool(self.live.all())

    def encode(self, rows: torch.Tensor, X: torch.Tensor) -> None:
        """Codes ``X [k, m]`` (written in place) of ``rows [m, C]``."""
        W, Q = self.W, self.Q
        P = cross_product(W, rows)  # W Aᵀ [k, m]
        # A NaN or Inf in a row of A makes its column of P non-finite (0 × Inf = NaN), so checking P (a
        # C/k-th of A's size) settles the usual case; the exact check on A runs only when P is not finite.
        if not bool(torch.isfinite(P.sum())):
            check_finite(rows)
        # A good start: the unconstrained solution clipped at zero; the solver then makes it exact.
        if X.is_contiguous():  # one block: straight into the output
            torch.mm(self.Qinv, P, out=X)
        else:
            X.copy_(self.Qinv @ P)
        X.clamp_min_(0.0)
        if not self.all_live:
            X[~self.live] = 0.0  # a zero bank row (a dead concept) explains nothing: its codes are 0
        if self.solver == "hals":
            idx = _nnls_hals(P, Q, X, self.tau)
            if idx.numel():  # the exact finish, on products recomputed in float64 for these rows only
                W64 = self.W64
                exact, ok = exact_nnls(W64 @ rows[idx].double().T, W64 @ W64.T, X[:, idx] > 0)
                X[:, idx] = torch.where(ok, exact.to(X.dtype), X[:, idx])
            return
        X.clamp_min_(torch.finfo(X.dtype).eps * max(float(P.abs().max()), 1e-30))
        X.copy_(mu(P, Q, X, ENCODE_MAX_SWEEPS, floor=0.0, delta=ENCODE_DELTA))


def nnls_codes(A: torch.Tensor, W: torch.Tensor, solver: str = "hals") -> torch.Tensor:
    """Non-negative least-squares codes ``U [n, k] = argmin_{U≥0} ‖A − U W‖_F`` for a frozen bank.

    Parameters
    ----------
    A : Tensor ``[n, C]``
        Rows to encode (any sign; the codes are non-negative).
    W : Tensor ``[k, C]``
        The concept bank, on ``A``'s device and dtype.
    solver : str
        ``"hals"`` (default: every row to the KKT tolerance of the module docstring, the rows HALS does
        not settle finished exactly) or ``"mu"`` (multiplicative updates; a reference, not exact).

    Returns
    -------
    Tensor ``[n, k]``
        The codes, ``≥ 0``, as the transposed view of a ``[k, n]`` buffer (call ``.contiguous()`` where a
        row-major copy is needed). All-zero rows get all-zero codes. Each row's codes depend on that row
        only, not on the rows encoded with it.

    Raises
    ------
    ActivationError
        When ``A`` holds NaN or Inf.
    ParameterError
        For an unknown ``solver``.
    """
    if solver not in SOLVERS:
        raise ParameterError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    Q = W @ W.T
    Qinv = torch.linalg.pinv(Q)
    W64 = W.double()
    tau = kkt_tolerance(W64 @ W64.T, W.dtype) if solver == "hals" else 0.0
    k, n = W.shape[0], A.shape[0]
    # The codes are solved as X = Uᵀ [k, n] in the output's own storage (returned transposed): no copy
    # into a separate [n, k] result.
    outT = torch.empty(k, n, dtype=W.dtype, device=A.device)
    # Rows are independent problems: blocks of rows bound the working memory and keep each block's sweeps in
    # cache. (A dense product: building CSR copies costs about as much as the dense product it would
    # replace, measured at 10 % density.)
    b = max(64, ENCODE_ELEMS // max(k, 1))
    bank = _Bank(W, Q, Qinv, W64, tau, solver)
    starts = range(0, n, b)
    # With several threads and blocks, each block runs in a one-thread worker (its many small sweep kernels
    # then never wait at a barrier); a block's codes are the same whichever worker runs it.
    workers = min(torch.get_num_threads(), len(starts)) if A.device.type == "cpu" else 1
    with one_thread_pool(workers, "nnls") as pool:
        def block(s: int) -> None:
            bank.encode(A[s : s + b], outT[:, s : s + b])

        if pool is None:
            for s in starts:
                block(s)
        else:
            list(pool.map(block, starts))
    return outT.T
