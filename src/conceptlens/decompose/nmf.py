"""Non-negative matrix factorisation (NMF) by accelerated HALS, in torch.

Notation (as in :mod:`conceptlens.decompose.base`):

=====  ==========  ==============================================================
``A``  ``[n, C]``  non-negative activations, one row per spatial position or image
``W``  ``[k, C]``  the concept bank ``components_``; each row has unit ℓ2 norm after fit
``U``  ``[n, k]``  non-negative concept coefficients, ``A ≈ U @ W``
=====  ==========  ==============================================================

Model: ``min ½‖A − U W‖²_F  s.t.  U ≥ 0, W ≥ 0``.

Both halves of an alternating step are the same non-negative quadratic problem in a *row-block*
form, which is what the solvers below solve::

    min_{X ≥ 0}  ½ tr(Xᵀ Q X) − tr(Pᵀ X)        X [k, m], Q [k, k] (Gram), P [k, m] (cross term)

* updating ``U`` with ``W`` fixed: ``X = Uᵀ [k, n]``, ``Q = W Wᵀ``, ``P = W Aᵀ``;
* updating ``W`` with ``U`` fixed: ``X = W [k, C]``, ``Q = Uᵀ U``, ``P = Uᵀ A``.

Keeping ``U`` transposed makes every HALS row update a contiguous, vectorised operation over ``n``.
The expensive products ``P`` and ``Q`` are computed once per half-step and then reused by several
cheap inner sweeps (Gillis & Glineur, *Accelerated multiplicative updates and hierarchical ALS
algorithms for NMF*, Neural Computation 2012). Encoding new activations is the very same solver with
the bank frozen: a non-negative least-squares problem, never an unconstrained pseudo-inverse.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

import torch

from conceptlens.decompose.base import Decomposition, as_rows, check_finite, register
from conceptlens.errors import ActivationError, ParameterError

__all__ = ["NMF", "hals", "mu", "SOLVERS", "Solver", "nndsvd_init", "nnls_codes"]


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


_INITS = ("nndsvd", "nndsvda", "nndsvdar", "random")
# Gillis & Glineur's recommended constants: at most 1 + α·ρ inner sweeps (ρ = cost of the products
# over the cost of one sweep) and stop a block once a sweep changes it by less than δ × the first one.
_ALPHA = 0.5
_DELTA = 0.1
_MAX_SWEEPS = 30
_OVERHEAD = 100_000  # cost of one small kernel launch, in flop equivalents (~5 µs at 20 GFLOP/s)
# Encoding solves one NNLS to convergence rather than taking one alternating step.
_ENCODE_MAX_SWEEPS = 500
_ENCODE_DELTA = 1e-4  # the mu solver's stopping rule (relative to its first step)
# HALS encoding: _ENCODE_FULL sweeps over every row, then a check on every _ENCODE_CHECK-th sweep; a row
# (one problem) is done once a sweep moves none of its codes by more than _ENCODE_TOL × the block's largest
# code, and the sweeps go on over the rows still moving only (gathered into a smaller block once at most
# _ENCODE_COMPACT of them are). On the real EfficientNet-Lite0 bench (100,000 rows, k = 25): ~7 sweeps'
# worth of work instead of 10 full ones, and a lower error than scikit-learn's `transform`.
_ENCODE_TOL = 3e-5
_ENCODE_FULL = 4
_ENCODE_CHECK = 2
_ENCODE_COMPACT = 0.4
# Codes per encode block (k × rows): bounds the encode's working memory (P and X, 16 MB each in float32).
_ENCODE_ELEMS = 2**22
# Entries of A per block of the product W Aᵀ: a block that stays in cache is ~20 % faster on CPU.
_PRODUCT_ELEMS = 2**20
# Entries are kept ≥ _FLOOR × scale during fit so that no row or column of a factor becomes exactly
# zero (a zero column makes its Gram diagonal zero and the HALS step undefined).
_FLOOR = 1e-10
# Below this density (fraction of non-zeros) the two [n,C]×[C,k] products use CSR copies of A on CPU:
# measured 3-4× faster than dense at EfficientNet-Lite0's ~10 % density (bench_nmf records it).
_SPARSE_DENSITY = 0.15
# Entries of A per scanning thread when CSR copies are built (below: one thread; the pool costs ~0.2 ms).
_SCAN_ELEMS = 2**21
# Rows of M per block of the product Aᵀ M with CSR copies (see _csr_pair): 2,048 × 35 floats = 280 KB.
_RMM_BLOCK_ROWS = 2048
# Sparse products widen their dense operand to a multiple of this many columns when it has more than
# _PAD_MIN (see _Data._padded).
_PAD_COLS = 8
_PAD_MIN = 16
# Power iterations of the randomised SVD inside fit: NNDSVD only needs a rough leading subspace, and HALS
# corrects the rest in its first sweeps.
_POWER_ITERS = 2
# Extra columns of the randomised range finder beyond the rank wanted (Halko et al. recommend 5–10). Measured
# with 5 on the real Lite0 matrix: 7 % faster to 1 % of cd's error, but the default run then stopped 0.7 %
# worse at k = 10 (seed 2) and took 17 instead of 8 iterations at k = 25 (seed 0).
_OVERSAMPLE = 10
# Rows per batch when a store is fitted without an explicit batch_size.
_STORE_BATCH = 8192
# The stopping rule's second test: stop once the improvement still to come, extrapolated geometrically
# from the last _STOP_WINDOW decreases, is below _STOP_AHEAD × tol (see _converged).
_STOP_AHEAD = 10.0
_STOP_WINDOW = 4
#: The default ``tol`` of NMF and CRAFT (see :class:`NMF`).
DEFAULT_TOL = 1e-4


# ------------------------------------------------------------------------------------------------
# solvers: small pure functions with one signature
# ------------------------------------------------------------------------------------------------
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


def _nnls_hals(P: torch.Tensor, Q: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``argmin_{X≥0} ½tr(XᵀQX) − tr(PᵀX)`` by HALS sweeps from ``X [k, m]`` (overwritten and returned).

    The ``m`` columns are independent problems. After ``_ENCODE_FULL`` sweeps, every
    ``_ENCODE_CHECK``-th sweep measures each column's largest change; a column is done once it is at
    most ``_ENCODE_TOL`` × the largest entry of ``X``, and the later sweeps run on the columns still
    moving only (gathered into a contiguous block, written back at the end). ``P`` is a temporary of the
    caller's and is scaled in place.
    """
    # P is scaled in place (the caller's temporary) and one buffer serves every check: fresh 10 MB
    # temporaries cost page faults on each call (~12,000 per 100,000-row encode, ~20 ms).
    P.div_(_gram_diagonal(Q)[1][:, None])
    sweep = _hals_sweeper(P, Q, X, 0.0, scaled=True)
    for _ in range(_ENCODE_FULL):
        sweep()
    thresh = _ENCODE_TOL * float(X.amax()) if X.numel() else 0.0
    idx: torch.Tensor | None = None  # columns of X held in Xa (None: all of them, Xa is X)
    Xa, done = X, _ENCODE_FULL
    spare = torch.empty_like(X)
    while done < _ENCODE_MAX_SWEEPS and Xa.shape[1]:
        for _ in range(_ENCODE_CHECK - 1):
            sweep()
        old = spare[:, : Xa.shape[1]]
        old.copy_(Xa)
        sweep()
        done += _ENCODE_CHECK
        moving = old.sub_(Xa).abs_().amax(0) > thresh
        left = int(moving.count_nonzero())
        if left == 0:
            break
        if left <= _ENCODE_COMPACT * Xa.shape[1]:
            if idx is None:
                idx = torch.nonzero(moving).squeeze(1)
            else:
                X[:, idx] = Xa
                idx = idx[moving]
            Xa = X[:, idx]
            sweep = _hals_sweeper(P[:, idx], Q, Xa, 0.0, scaled=True)
    if idx is not None:
        X[:, idx] = Xa
    return X


def cross_product(W: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``W Aᵀ``: ``[k, C] × [C, n] → [k, n]``, on CPU in blocks of rows of ``A`` that stay in cache.

    One block of ``_PRODUCT_ELEMS`` entries of ``A`` at a time, written into one output: measured ~20 %
    faster than the single product at k = 25, C = 1,280 (a thin product that streams ``A`` from memory).
    """
    k, C = W.shape
    n = A.shape[0]
    if A.device.type != "cpu":
        return W @ A.T
    P = torch.empty(k, n, dtype=W.dtype, device=A.device)
    pb = max(64, _PRODUCT_ELEMS // max(C, 1))
    for t in range(0, n, pb):
        torch.mm(W, A[t : t + pb].T, out=P[:, t : t + pb])
    return P


def nnls_codes(A: torch.Tensor, W: torch.Tensor, solver: str = "hals") -> torch.Tensor:
    """Non-negative least-squares codes ``U [n, k] = argmin_{U≥0} ‖A − U W‖_F`` for a frozen bank.

    Parameters
    ----------
    A : Tensor ``[n, C]``
        Rows to encode (any sign; the codes are non-negative).
    W : Tensor ``[k, C]``
        The concept bank, on ``A``'s device and dtype.
    solver : str
        ``"hals"`` (default: solved to ~1e-5 of the largest code) or ``"mu"`` (reference).

    Returns
    -------
    Tensor ``[n, k]``
        The codes, ``≥ 0``, as the transposed view of a ``[k, n]`` buffer (call ``.contiguous()`` where a
        row-major copy is needed). All-zero rows get all-zero codes.

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
    k, n = W.shape[0], A.shape[0]
    # The codes are solved as X = Uᵀ [k, n] in the output's own storage (returned transposed): no copy
    # into a separate [n, k] result.
    outT = torch.empty(k, n, dtype=W.dtype, device=A.device)
    # Rows are independent problems: blocks of rows bound the working memory. (A dense product: building
    # CSR copies costs about as much as the dense product it would replace, measured at 10 % density.)
    b = max(64, _ENCODE_ELEMS // max(k, 1))
    for s in range(0, n, b):
        rows = A[s : s + b]
        P = cross_product(W, rows)  # W Aᵀ [k, b]
        # A NaN or Inf in a row of A makes its column of P non-finite (0 × Inf = NaN), so checking P (a
        # C/k-th of A's size) settles the usual case; the exact check on A runs only when P is not finite.
        if not bool(torch.isfinite(P.sum())):
            check_finite(rows)
        # A good start: the unconstrained solution clipped at zero; the solver then makes it exact.
        X = outT[:, s : s + b]
        if X.is_contiguous():  # one block: straight into the output
            torch.mm(Qinv, P, out=X)
        else:
            X.copy_(Qinv @ P)
        X.clamp_min_(0.0)
        if solver == "hals":
            _nnls_hals(P, Q, X)
            continue
        X.clamp_min_(torch.finfo(X.dtype).eps * max(float(P.abs().max()), 1e-30))
        X.copy_(mu(P, Q, X, _ENCODE_MAX_SWEEPS, floor=0.0, delta=_ENCODE_DELTA))
    return outT.T


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


def _converged(history: list[float], tol: float) -> bool:
    """The outer stopping rule, on the relative errors ``history`` of the iterations so far.

    Stop when the last iteration improved the error by less than ``tol`` (relative), or when the
    improvement still to come, extrapolated from the last decreases, is below ``_STOP_AHEAD · tol``. The
    extrapolation assumes the decreases shrink geometrically with the largest ratio ``r`` seen among the
    last ``_STOP_WINDOW`` of them: what remains is ``d·r/(1 − r)`` for a last decrease ``d``. It is
    trusted only while the ratios do not grow (convergence at least geometric): NMF runs often slow
    down, stall and speed up again, and there a geometric model would stop far too early, so such runs
    fall back to the first test, as does any run with a non-positive decrease in the window.
    """
    if tol <= 0 or len(history) < 2:
        return False
    d = [(a - b) / a if a > 0 else 0.0 for a, b in zip(history[:-1], history[1:], strict=True)]
    if d[-1] < tol:
        return True
    if len(d) < _STOP_WINDOW:
        return False
    last = d[-_STOP_WINDOW:]
    if min(last) <= 0:
        return False
    ratios = [b / a for a, b in zip(last[:-1], last[1:], strict=True)]
    # ratios that grow (beyond rounding) mean the convergence is slowing down: no extrapolation
    if any(b > a * (1 + 1e-6) for a, b in zip(ratios[:-1], ratios[1:], strict=True)):
        return False
    r = max(ratios)
    return r < 1 and last[-1] * r / (1 - r) < _STOP_AHEAD * tol


# ------------------------------------------------------------------------------------------------
# products with A, dense or sparse
# ------------------------------------------------------------------------------------------------
class _Data:
    """``A [n, C]`` with the products the solvers need: ``A @ M`` and ``Aᵀ @ M``.

    On CPU, when ``A`` is mostly zeros (ReLU activations), CSR copies of ``A`` and of ``Aᵀ`` (the latter
    in column blocks, see :func:`_csr_pair`) make both products proportional to the non-zeros;
    ``sparse=None`` decides by density.
    """

    def __init__(self, A: torch.Tensor, sparse: bool | None = None) -> None:
        self.A = A
        self.sparse = False
        self.density = 1.0
        self._pads: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}
        if sparse is False:
            return
        if A.device.type != "cpu":
            self.density = float(torch.count_nonzero(A)) / max(A.numel(), 1)
            self.sparse = bool(sparse)  # None: dense products on accelerators
            if self.sparse:
                self._csr = A.to_sparse_csr()
                self._csr_t = [(0, A.shape[0], A.T.contiguous().to_sparse_csr())]
            return
        parts = _nonzeros(A)
        self.density = sum(int(p[0].size) for p in parts) / max(A.numel(), 1)
        self.sparse = bool(sparse) if sparse is not None else self.density <= _SPARSE_DENSITY
        if self.sparse:
            self._csr, self._csr_t = _csr_pair(A, parts)

    def mean_max(self) -> tuple[torch.Tensor, float]:
        """``(mean(A), max(A))``, from the non-zeros alone when CSR copies exist (a tenth of the reads)."""
        if self.sparse:
            v = self._csr.values()
            top = float(v.max()) if v.numel() else 0.0
            return v.sum(dtype=torch.float64).to(v.dtype) / max(self.A.numel(), 1), top
        return self.A.mean(), float(self.A.max()) if self.A.numel() else 0.0

    def _padded(self, M: torch.Tensor) -> torch.Tensor:
        """``M [m, r]`` as a contiguous operand of a sparse product, widened with zero columns to a multiple
        of ``_PAD_COLS`` when ``r > _PAD_MIN`` (one zero buffer per shape, kept for the fit).

        MKL's CSR × dense kernels run whole SIMD widths of dense columns: on 12,103 × 1,280 Lite0
        activations (one thread) both products took 10.0 ms at 25 columns and 8.9 ms at 32, 8.4 at 20 and
        6.8 at 24, 15.0 at 35 and 14.0 at 40; at 10 columns, 16 were slower (5.1 vs 4.3 ms), at 50 no faster.
        The extra columns are zeros and are sliced off, so the results are those of the narrow product.
        """
        r = M.shape[1]
        wide = -(-r // _PAD_COLS) * _PAD_COLS
        if r <= _PAD_MIN or wide == r or M.device.type != "cpu":
            return M.contiguous()
        key = (M.shape[0], wide, M.dtype)
        if key not in self._pads:
            self._pads[key] = torch.zeros(M.shape[0], wide, dtype=M.dtype)
        buf = self._pads[key]
        buf[:, :r] = M
        return buf

    def mm(self, M: torch.Tensor) -> torch.Tensor:
        """``A @ M``: ``[n, C] × [C, r] → [n, r]`` (with CSR copies: a view of an ``[n, r']`` result)."""
        if self.sparse:
            return (self._csr @ self._padded(M))[:, : M.shape[1]]
        return self.A @ M

    def rmm(self, M: torch.Tensor) -> torch.Tensor:
        """``Aᵀ @ M``: ``[C, n] × [n, r] → [C, r]`` (with CSR copies: a view of a ``[C, r']`` result)."""
        if self.sparse:
            r = M.shape[1]
            M = self._padded(M)
            out = None
            for lo, hi, block in self._csr_t:  # Aᵀ by blocks of columns: see _csr_pair
                part = block @ M[lo:hi]
                out = part if out is None else out.add_(part)
            return out[:, :r]
        # (Mᵀ A)ᵀ, not Aᵀ M: with both operands transposed views, torch's CPU matmul can fall off the fast
        # BLAS path for small r (measured 30× slower at r = 10 on a [5733, 1280] matrix)
        return (M.T @ self.A).T


def _nonzeros(A: torch.Tensor) -> list[tuple[Any, Any, Any]]:
    """The non-zeros of ``A [n, C]`` (CPU) in row-major order, as blocks of rows.

    Returns a list of ``(values [nnz_b], columns [nnz_b] int32, row counts [rows_b] int32)``, one per
    block. The scan (numpy's ``flatnonzero`` on a boolean mask, about 5× faster than on the floats) is the
    costly part of building CSR copies and numpy releases the GIL in it, so with more than one torch
    thread the row blocks are scanned by that many threads (12,103 × 1,280, 2 threads: the scan 35–43 →
    16–19 ms; with the CSR assembly and transpose, 49 → 42 ms, medians of 25 interleaved runs).
    """
    import numpy as np

    a = A.detach().contiguous().numpy()
    n, C = a.shape

    def scan(lo: int, hi: int) -> tuple[Any, Any, Any]:
        blk = a[lo:hi]
        flat = np.flatnonzero(blk != 0)
        counts = np.diff(np.searchsorted(flat, np.arange(0, (hi - lo + 1) * C, C, dtype=flat.dtype)))
        return blk.ravel()[flat], (flat % C).astype(np.int32), counts.astype(np.int32)

    workers = min(torch.get_num_threads(), max(1, a.size // _SCAN_ELEMS))
    if workers <= 1:
        return [scan(0, n)]
    from concurrent.futures import ThreadPoolExecutor

    cuts = [n * i // workers for i in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(scan, cuts[:-1], cuts[1:]))


def _csr_pair(
    A: torch.Tensor, parts: list[tuple[Any, Any, Any]] | None = None, block_rows: int | None = None
) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
    """A CSR copy of ``A [n, C]`` and CSR copies of ``Aᵀ`` by blocks of its columns (CPU, int32 indices).

    Returns ``(csr, blocks)`` with ``blocks`` a list of ``(lo, hi, csr of A[lo:hi]ᵀ)``, so that
    ``Aᵀ M = Σ blocks[b] @ M[lo:hi]``. Each block's ``M[lo:hi]`` (``block_rows`` rows, default
    ``_RMM_BLOCK_ROWS``) stays in the core's cache while its rows are gathered: on 12,103 × 1,280 Lite0
    activations ``Aᵀ M`` takes 4.7 instead of 5.5 ms at 25 columns and 7.0 instead of 8.6 ms at 35 (one
    thread). Built with numpy/scipy from the non-zeros (:func:`_nonzeros`, or ``parts`` when already
    scanned) and O(nnz) transposes, about 10× faster than ``to_sparse_csr`` on a dense tensor.
    """
    import numpy as np
    from scipy import sparse as sp

    n, C = A.shape
    if parts is None:
        parts = _nonzeros(A)
    nnz = sum(int(p[0].size) for p in parts)
    if nnz >= 2**31 - 1:  # int32 indices would overflow: let torch build int64 ones
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            return A.to_sparse_csr(), [(0, n, A.T.contiguous().to_sparse_csr())]
    one = len(parts) == 1
    vals = parts[0][0] if one else np.concatenate([p[0] for p in parts])
    cols = parts[0][1] if one else np.concatenate([p[1] for p in parts])
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(parts[0][2] if one else np.concatenate([p[2] for p in parts]), out=indptr[1:])
    m = sp.csr_matrix((vals, cols, indptr), shape=(n, C))
    step = max(int(block_rows or _RMM_BLOCK_ROWS), 1)
    nb = max(1, -(-n // step))
    cuts = [n * i // nb for i in range(nb + 1)]

    def wrap(x: Any) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            torch.from_numpy(x.indptr.astype(np.int32, copy=False)),
            torch.from_numpy(x.indices.astype(np.int32, copy=False)),
            torch.from_numpy(x.data),
            size=x.shape,
            check_invariants=False,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        blocks = []
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            a, b = int(indptr[lo]), int(indptr[hi])
            rows = sp.csr_matrix((vals[a:b], cols[a:b], indptr[lo : hi + 1] - a), shape=(hi - lo, C))
            # CSR of a block of Aᵀ = CSC of the rows lo:hi of A: a counting sort of their column indices
            blocks.append((lo, hi, wrap(rows.T.tocsr())))
        return wrap(m), blocks


# ------------------------------------------------------------------------------------------------
# initialisation
# ------------------------------------------------------------------------------------------------
def _top_svd(
    A: torch.Tensor, r: int, gen: torch.Generator, data: _Data | None = None, power_iters: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leading ``r`` singular triplets of ``A [n, C]``: ``(u [n, r], s [r], vh [r, C])``.

    Exact SVD when the small side is small; otherwise a seeded randomised range finder with power
    iterations (Halko, Martinsson & Tropp 2011), which is what makes NNDSVD cheap on tall matrices.
    """
    n, C = A.shape
    q = min(r + _OVERSAMPLE, n, C)
    if min(n, C) <= 4 * q:
        u, s, vh = torch.linalg.svd(A, full_matrices=False)
        return u[:, :r], s[:r], vh[:r]
    d = data if data is not None else _Data(A, sparse=False)
    G = torch.randn(C, q, generator=gen, device=A.device, dtype=A.dtype)
    # Only the [C, q] side is orthonormalised inside the power loop: Y = A Z spans the same subspace as
    # its Q factor, and with Z orthonormal Y is conditioned like A's top q singular values (float32 keeps
    # AᵀY well enough for the next QR). The costly [n, q] QR runs once, before the projection.
    Y = d.mm(G)
    for _ in range(max(int(power_iters), 0)):
        Z = torch.linalg.qr(d.rmm(Y)).Q
        Y = d.mm(Z)
    Y = torch.linalg.qr(Y).Q
    ub, s, vh = torch.linalg.svd(d.rmm(Y).T, full_matrices=False)
    return Y @ ub[:, :r], s[:r], vh[:r]


def nndsvd_init(
    A: torch.Tensor,
    k: int,
    variant: str = "nndsvda",
    seed: int = 0,
    *,
    sparse: bool | None = False,
    power_iters: int = 4,
    data: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD initialisation (Boutsidis & Gallopoulos 2008) and its variants.

    Parameters
    ----------
    A : Tensor ``[n, C]``
        Non-negative data.
    k : int
        Number of components.
    variant : {"nndsvd", "nndsvda", "nndsvdar", "random"}
        ``"nndsvd"`` keeps the zeros; ``"nndsvda"`` fills them with ``mean(A)``; ``"nndsvdar"`` with
        small random values; ``"random"`` ignores the SVD and draws ``|N(0,1)|·sqrt(mean(A)/k)``.
    seed : int
        Seed of the randomised SVD and of the random fills.
    sparse : bool or None
        Use CSR products in the randomised SVD (``None``: when ``A`` is on CPU and mostly zeros).
    power_iters : int
        Power iterations of the randomised SVD (more: closer to the exact leading subspace).
    data
        The CSR copies already built for the fit (internal; saves building them twice).

    Returns
    -------
    (Ut, W) : Tensors ``[k, n]`` and ``[k, C]``
        Non-negative factors, ``Utᵀ W ≈ A``.
    """
    n, C = A.shape
    gen = torch.Generator(device=A.device).manual_seed(int(seed))
    if data is None and sparse is not False and variant != "random":
        data = _Data(A, sparse)
    avg, top = data.mean_max() if data is not None else (A.mean(), float(A.max()) if A.numel() else 0.0)
    if variant == "random":
        scale = torch.sqrt(avg / k)
        Ut = scale * torch.randn(k, n, generator=gen, device=A.device, dtype=A.dtype).abs_()
        W = scale * torch.randn(k, C, generator=gen, device=A.device, dtype=A.dtype).abs_()
        return Ut, W
    r = min(k, n, C)
    u, s, vh = _top_svd(A, r, gen, data, power_iters)
    x, y = u.T, vh  # [r, n], [r, C]
    xp, xn = x.clamp(min=0), (-x).clamp(min=0)
    yp, yn = y.clamp(min=0), (-y).clamp(min=0)
    tiny = torch.finfo(A.dtype).tiny
    nxp, nxn = xp.norm(dim=1), xn.norm(dim=1)
    nyp, nyn = yp.norm(dim=1), yn.norm(dim=1)
    mp, mn = nxp * nyp, nxn * nyn
    use_p = (mp >= mn)[:, None]
    uu = torch.where(use_p, xp / nxp.clamp_min(tiny)[:, None], xn / nxn.clamp_min(tiny)[:, None])
    vv = torch.where(use_p, yp / nyp.clamp_min(tiny)[:, None], yn / nyn.clamp_min(tiny)[:, None])
    sig = torch.where(use_p[:, 0], mp, mn)
    # The leading pair is one-signed for non-negative A (Perron–Frobenius): take |u0|, |v0|.
    uu[0], vv[0], sig[0] = x[0].abs(), y[0].abs(), 1.0
    lam = torch.sqrt(s * sig)[:, None]
    Ut = torch.zeros(k, n, device=A.device, dtype=A.dtype)
    W = torch.zeros(k, C, device=A.device, dtype=A.dtype)
    Ut[:r], W[:r] = lam * uu, lam * vv
    eps = 1e-6 * top
    Ut[Ut < eps] = 0
    W[W < eps] = 0
    if variant == "nndsvda":
        Ut[Ut == 0] = avg
        W[W == 0] = avg
    elif variant == "nndsvdar":
        zu, zw = Ut == 0, W == 0
        Ut[zu] = (avg / 100) * torch.randn(int(zu.sum()), generator=gen, device=A.device, dtype=A.dtype).abs()
        W[zw] = (avg / 100) * torch.randn(int(zw.sum()), generator=gen, device=A.device, dtype=A.dtype).abs()
    return Ut, W


# ------------------------------------------------------------------------------------------------
# the estimator
# ------------------------------------------------------------------------------------------------
def _normalise_rows(Ut: torch.Tensor, W: torch.Tensor, *more: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rescale so that every row of ``W`` has unit norm, moving the scale into ``Uᵀ`` (UW unchanged).

    Tensors in ``more`` (``[k, …]``, linear in ``Uᵀ``, such as ``Uᵀ A``) are scaled like ``Uᵀ``.
    """
    norms = torch.linalg.vector_norm(W, dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))[:, None]
    return (Ut * norms, W / norms, *(m * norms for m in more))


@register("nmf")
class NMF(Decomposition):
    """Non-negative matrix factorisation ``A ≈ U W`` with ``U, W ≥ 0``, solved by accelerated HALS.

    Parameters
    ----------
    n_concepts : int
        Number of concepts ``k`` (``1 ≤ k ≤ C``).
    tol : float
        Stop when the relative error ``‖A − UW‖_F / ‖A‖_F`` improves by less than ``tol`` (relative)
        from one outer iteration to the next, or when the improvement still to come, extrapolated
        geometrically from the last four iterations' decreases (only while their ratios do not grow),
        is below ``10·tol`` (relative): on a quickly converging run the last few iterations, together
        worth less than 0.1 % by then, are skipped. A looser ``tol=1e-3`` is 1.2–1.4× faster on real
        Lite0 activations (12,103 × 1,280: 6 instead of 11 iterations at k = 25, ending 0.28 % above
        scikit-learn-cd's error), but NMF runs can crawl along a plateau and then drop: on the
        ground-truth world's activations (7,680 × 64, k = 10) ``1e-3`` stops after 9 iterations, 6.3 %
        above the error that ``1e-4`` reaches after 63 (the plateau's decreases are 0.03–0.1 % per
        iteration for 25 iterations before the drop). ``0`` runs all ``max_iter`` iterations.
    max_iter : int
        Maximum number of outer (alternating) iterations.
    seed : int
        Seed of the initialisation (randomised SVD, random fills); same seed → same bank.
    init : {"nndsvda", "nndsvd", "nndsvdar", "random"}
        Initialisation (see :func:`nndsvd_init`).
    solver : {"hals", "mu"}
        Inner solver; ``"hals"`` is much faster, ``"mu"`` (multiplicative updates) is a reference.
    inner_sweeps : int or None
        Maximum inner sweeps per half-step. ``None`` uses Gillis & Glineur's rule ``1 + ½ρ`` (ρ = cost
        of the products / cost of one sweep, kernel launches included; at most 30). In both cases a
        half-step stops early once a sweep changes the factor by less than 10 % of what the first
        sweep changed.
    progress : bool
        Show a tqdm progress bar over iterations (only on a terminal).
    verbose : bool
        Print the relative error every 10 iterations and at the end.
    batch_size : int or None
        ``None``: batch HALS on the whole matrix. An integer: mini-batch (streamed) NMF — each outer
        iteration is one pass over the rows in batches of ``batch_size``: every batch's codes are solved
        with the bank frozen and only the sufficient statistics ``UᵀU [k, k]`` and ``UᵀA [k, C]`` are
        kept (float64), then the bank takes one HALS step on them. Memory is ``O(batch_size·C + k·C)``,
        not ``O(n·C)``, so ``fit`` also accepts an :class:`~conceptlens.io.store.ActivationStore` (any
        object with ``iter_batches(rows)``), which is read batch by batch. The bank is initialised
        from the first batch.
    distributed : bool
        Data-parallel fit over an initialised ``torch.distributed`` process group: each rank passes
        its own shard of rows, the statistics are all-reduced, and every rank ends with the same bank
        (rank 0's first batch initialises it). Implies the mini-batch algorithm (one batch per rank
        when ``batch_size`` is ``None``).

    Attributes
    ----------
    components_ : Tensor ``[k, C]``
        The concept bank ``W``, non-negative, rows of unit ℓ2 norm.
    n_iter_ : int
        Outer iterations run.
    reconstruction_err_ : float
        Relative Frobenius error ``‖A − UW‖_F / ‖A‖_F`` on the training data.
    history_ : list of float
        Relative error after each outer iteration.
    times_ : list of float
        Seconds since the start of ``fit`` at each entry of ``history_`` (initialisation included).

    Examples
    --------
    >>> d = NMF(n_concepts=10, seed=0).fit(A)        # A [n, C] or [N, h, w, C], A ≥ 0
    >>> U = d.encode(A)                              # [..., 10], ≥ 0
    """

    nonnegative = True
    label = "NMF"
    quick_params: ClassVar[Mapping[str, Any]] = {"max_iter": 100}
    encode_checks_finite = True  # nnls_codes checks its product W Aᵀ

    def __init__(
        self,
        n_concepts: int = 10,
        *,
        tol: float = DEFAULT_TOL,
        max_iter: int = 200,
        seed: int = 0,
        init: str = "nndsvda",
        solver: str = "hals",
        inner_sweeps: int | None = None,
        progress: bool = False,
        verbose: bool = False,
        batch_size: int | None = None,
        distributed: bool = False,
    ) -> None:
        super().__init__(n_concepts=n_concepts, seed=seed)
        self.tol = tol
        self.max_iter = max_iter
        self.init = init
        self.solver = solver
        self.inner_sweeps = inner_sweeps
        self.progress = progress
        self.verbose = verbose
        self.batch_size = batch_size
        self.distributed = distributed

    # -- validation ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) or self.tol < 0:
            raise ParameterError(f"tol must be a finite number ≥ 0, got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ParameterError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if self.init not in _INITS:
            raise ParameterError(f"init must be one of {', '.join(_INITS)}; got {self.init!r}")
        if self.solver not in SOLVERS:
            raise ParameterError(f"solver must be one of {', '.join(SOLVERS)}; got {self.solver!r}")
        s = self.inner_sweeps
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise ParameterError(f"inner_sweeps must be a positive integer or None, got {s!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ParameterError(f"seed must be an integer, got {self.seed!r}")
        b = getattr(self, "batch_size", None)
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ParameterError(f"batch_size must be a positive integer or None, got {b!r}")

    def _sweep_budget(self, n: int, C: int, k: int, density: float = 1.0) -> tuple[int, int]:
        """Maximum inner sweeps for the U half-step and the W half-step (``density``: the fraction of
        non-zeros of ``A`` when its products are sparse, which makes them cheaper)."""
        if self.inner_sweeps is not None:
            return self.inner_sweeps, self.inner_sweeps
        # ρ = 1 + (cost of P and Q) / (cost of one sweep), in flops. A sweep runs two kernels per row,
        # whose fixed launch cost (~_OVERHEAD flops) dominates when m·k is small. A sparse product
        # streams its index arrays too: count it at twice the flops of its non-zeros.
        cross = 2 * n * C * k * min(1.0, 2.0 * density)
        prod_u = cross + 2 * C * k * k
        prod_w = cross + 2 * n * k * k
        rho_u = 1 + prod_u / (k * (2 * n * k + _OVERHEAD))
        rho_w = 1 + prod_w / (k * (2 * C * k + _OVERHEAD))
        return min(1 + int(_ALPHA * rho_u), _MAX_SWEEPS), min(1 + int(_ALPHA * rho_w), _MAX_SWEEPS)

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, A: Any, layer_name: str | None = None) -> NMF:
        """Fit the concept bank on non-negative ``A``.

        Parameters
        ----------
        A : Tensor ``[n, C]`` or ``[..., C]`` (e.g. ``[N, h, w, C]``), or an activation store
            Non-negative activations. A store (:class:`~conceptlens.io.store.ActivationStore`, or any
            object with ``iter_batches(rows)`` yielding ``[b, C]`` tensors) is fitted by the mini-batch
            algorithm without loading it whole (see ``batch_size``).
        layer_name : str, optional
            Name of the layer ``A`` comes from; only used in error messages.

        Returns
        -------
        NMF
            ``self``, with ``components_``, ``n_iter_``, ``reconstruction_err_``, ``history_``.
        """
        if self._streamed(A):
            self._fit_online(A, layer_name)
        else:
            self._fit_rows(A, layer_name)
        return self

    def _streamed(self, A: Any) -> bool:
        return (
            (not isinstance(A, torch.Tensor) and hasattr(A, "iter_batches"))
            or getattr(self, "batch_size", None) is not None
            or bool(getattr(self, "distributed", False))
        )

    def fit_encode(self, A: torch.Tensor, layer_name: str | None = None) -> torch.Tensor:
        """Fit on ``A`` and return the fitted coefficients (scikit-learn's ``fit_transform``).

        Parameters
        ----------
        A : Tensor ``[..., C]``
            Non-negative activations.
        layer_name : str, optional
            Name of the layer, for error messages.

        Returns
        -------
        Tensor ``[..., k]``
            The coefficients ``U`` found during fit (``A ≈ U @ components_``), non-negative.
        """
        if self._streamed(A):
            if not isinstance(A, torch.Tensor):
                raise ParameterError(
                    "fit_encode needs the activations in memory; for a store call fit(store) and then "
                    "encode(batch) for each batch of store.iter_batches(rows)"
                )
            self._fit_online(A, layer_name)
            return self.encode(A)
        Ut, lead = self._fit_rows(A, layer_name)
        return Ut.T.reshape(*lead, Ut.shape[0])

    def _fit_rows(self, A: torch.Tensor, layer_name: str | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        t0 = time.perf_counter()
        self._check_params()
        rows = self._validate(A, finite=False)
        lead = tuple(A.shape[:-1])
        dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        X = rows.to(dtype)
        # one pass for the NaN/Inf check (a NaN makes both NaN, ±Inf shows in lo or hi), the sign check and
        # the scale
        lo, hi = (float(v) for v in torch.aminmax(X)) if X.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite(X)
        self._check_nonnegative(X, layer_name, lo)
        n, C = X.shape
        k = self.n_concepts
        data = _Data(X, getattr(self, "_sparse", None))
        # float64 accumulation: a float32 reduction over n·C entries drifts by ~0.1 % at n·C ≈ 10⁷.
        # With CSR copies only the non-zeros are summed.
        nz = data._csr.values() if data.sparse else X
        normA2 = float(torch.linalg.vector_norm(nz, dtype=torch.float64)) ** 2
        self.history_: list[float] = []
        self.times_: list[float] = []
        if normA2 == 0.0:
            warnings.warn(
                "NMF was fitted on all-zero activations: the concept bank is all zeros and every code "
                "will be zero; check the layer and the images",
                RuntimeWarning,
                stacklevel=3,
            )
            self.components_ = torch.zeros(k, C, dtype=dtype, device=X.device)
            self.n_iter_, self.reconstruction_err_ = 0, 0.0
            return torch.zeros(k, n, dtype=dtype, device=X.device), lead

        solve = SOLVERS[self.solver]
        floor_w = _FLOOR
        floor_u = _FLOOR * hi
        dens = data.density if data.sparse else 1.0
        sweeps_u, sweeps_w = self._sweep_budget(n, C, k, dens)
        Ut, W = nndsvd_init(X, k, self.init, self.seed, sparse=data.sparse, power_iters=_POWER_ITERS,
                            data=data)
        self._sparse_used = data.sparse
        Ut, W = _normalise_rows(Ut.clamp_min(floor_u), W.clamp_min(floor_w))

        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.max_iter, desc=f"NMF k={k}", unit="it", disable=True if not self.progress else None
        )
        it = 0
        # Benchmark hook (not a parameter): stop as soon as the error reaches this value.
        stop_below = getattr(self, "_stop_below", None)
        try:
            for it in range(1, self.max_iter + 1):
                # U half-step: products once, then cheap sweeps.
                Ut = solve(data.mm(W.T).T.contiguous(), W @ W.T, Ut, sweeps_u, floor=floor_u, delta=_DELTA)
                # W half-step.
                R, S = data.rmm(Ut.T).T.contiguous(), Ut @ Ut.T
                W = solve(R, S, W, sweeps_w, floor=floor_w, delta=_DELTA)
                # ‖A − UW‖² from the Gram products already at hand: ‖A‖² − 2⟨UᵀA, W⟩ + ⟨UᵀU, WWᵀ⟩.
                err2 = normA2 - 2.0 * float((R * W).sum()) + float((S * (W @ W.T)).sum())
                rel = math.sqrt(max(err2, 0.0) / normA2)
                self.history_.append(rel)
                self.times_.append(time.perf_counter() - t0)
                Ut, W, R = _normalise_rows(Ut, W, R)
                bar.update(1)
                bar.set_postfix(rel_err=f"{rel:.5f}", refresh=False)
                if self.verbose and it % 10 == 0:
                    bar.write(f"NMF iteration {it}: relative error {rel:.6f}")
                if _converged(self.history_, self.tol):
                    break
                if stop_below is not None and rel <= stop_below:
                    break
        finally:
            bar.close()

        # Entries held at the floor are zeros of the exact problem.
        W = torch.where(W <= 1e3 * floor_w, torch.zeros_like(W), W)
        Ut = torch.where(Ut <= 1e3 * floor_u, torch.zeros_like(Ut), Ut)
        Ut, W, R = _normalise_rows(Ut, W, R)
        self.components_ = W
        self.n_iter_ = it
        self.reconstruction_err_ = self._final_error(X, data, Ut, W, normA2, R)
        if self.verbose:
            print(f"NMF: {it} iterations, relative error {self.reconstruction_err_:.6f}")
        return Ut, lead

    @staticmethod
    def _final_error(
        X: torch.Tensor, data: _Data, Ut: torch.Tensor, W: torch.Tensor, normA2: float,
        R: torch.Tensor | None = None,
    ) -> float:
        """``‖X − UᵀW‖ / ‖X‖`` of the returned factors.

        From float64 Gram products (``‖X‖² − 2⟨UX, W⟩ + ⟨UUᵀ, WWᵀ⟩``) unless the error is so small that
        the subtraction would lose digits; then one exact residual. ``R`` is the last iteration's ``UX``
        ``[k, C]`` (rescaled with ``U``), which saves a product: it misses only the codes that the final
        clean-up set from ≤ 1e-7·max(X) to zero, a change of the error far below its float32 precision.
        """
        R = (data.rmm(Ut.T).T if R is None else R).double()
        Ud, Wd = Ut.double(), W.double()
        err2 = normA2 - 2.0 * float((R * Wd).sum()) + float(((Ud @ Ud.T) * (Wd @ Wd.T)).sum())
        # The float32 product R is good to ~5e-6 relative, so err2 carries an error of ~5e-6·‖X‖²: below a
        # relative error of 20 % (err2 < 0.04·‖X‖²) that would exceed 1e-4 of err2, so compute it exactly.
        if err2 > 0.04 * normA2:
            return math.sqrt(err2 / normA2)
        resid = torch.linalg.vector_norm(X - Ut.T @ W, dtype=torch.float64)
        return float(resid) / math.sqrt(normA2)

    # -- mini-batch / out-of-core / distributed fitting ---------------------------------------
    @staticmethod
    def _batches(A: Any, b: int) -> Iterator[torch.Tensor]:
        """Batches of ``[≤ b, C]`` rows of a tensor or a store."""
        if isinstance(A, torch.Tensor):
            rows, _ = as_rows(A)
            for i in range(0, rows.shape[0], b):
                yield rows[i : i + b]
        else:
            for batch in A.iter_batches(b):
                if not isinstance(batch, torch.Tensor) or batch.ndim != 2:
                    raise ActivationError("a store's iter_batches must yield [rows, C] tensors")
                yield batch

    def _fit_online(self, A: Any, layer_name: str | None) -> None:
        """Mini-batch NMF: per pass, frozen-bank codes per batch → ``UᵀU``, ``UᵀA`` → one bank step.

        Every pass solves the same problems as a batch HALS iteration (the codes of a batch depend only
        on its rows and the bank), so the result does not depend on how rows are batched or sharded,
        up to the order of floating-point sums. The code solve runs a fixed number of sweeps (no
        data-dependent early stop) for the same reason.
        """
        t0 = time.perf_counter()
        self._check_params()
        dist: Any = None
        if self.distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ParameterError(
                    "distributed=True needs an initialised torch.distributed process group: launch with "
                    "`torchrun --nproc-per-node N script.py` and call "
                    'torch.distributed.init_process_group("gloo") (CPU) or ("nccl") (GPU) before fit'
                )
        if isinstance(A, torch.Tensor):
            self._validate(A)
            b = self.batch_size or max(as_rows(A)[0].shape[0], 1)
        else:
            b = self.batch_size or _STORE_BATCH
        k = self.n_concepts
        first = next(iter(self._batches(A, b)), None)
        if first is None or first.shape[0] == 0:
            raise ActivationError("no activation rows to fit on (the store is empty)")
        if not isinstance(A, torch.Tensor):
            self._validate(first)
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        device = first.device
        C = first.shape[1]
        first = first.to(dtype)
        check_finite(first)
        self._check_nonnegative(first, layer_name)
        solve = SOLVERS[self.solver]
        # The bank starts from the first batch (rank 0's when distributed, broadcast to all ranks).
        W = nndsvd_init(first, k, self.init, self.seed)[1].clamp_min(_FLOOR)
        W = _normalise_rows(torch.ones(k, 1, dtype=dtype, device=device), W)[1]
        top = torch.tensor([float(first.max())], dtype=dtype, device=device)
        if dist is not None:
            dist.broadcast(W, src=0)
            dist.broadcast(top, src=0)
        floor_u = _FLOOR * max(float(top[0]), 1e-30)
        sweeps_u = self._sweep_budget(min(b, first.shape[0]) if dist is None else b, C, k)[0]
        del first

        self.history_, self.times_ = [], []
        normA2, n, sweeps_w = 0.0, 0, 1
        it = 0
        stop_below = getattr(self, "_stop_below", None)
        for it in range(1, self.max_iter + 1):
            Q = W @ W.T
            Qinv = torch.linalg.pinv(Q)
            S = torch.zeros(k, k, dtype=torch.float64, device=device)
            R = torch.zeros(k, C, dtype=torch.float64, device=device)
            extra = torch.zeros(2, dtype=torch.float64, device=device)  # ‖A‖², n (first pass only)
            for batch in self._batches(A, b):
                if batch.shape[-1] != C:
                    raise ActivationError(
                        f"a batch has {batch.shape[-1]} channels but the first had {C}; a store must hold "
                        "one layer's activations"
                    )
                Ab = batch.to(device=device, dtype=dtype)
                if it == 1:
                    check_finite(Ab)
                    self._check_nonnegative(Ab, layer_name)
                    extra[0] += torch.linalg.vector_norm(Ab, dtype=torch.float64) ** 2
                    extra[1] += Ab.shape[0]
                P = W @ Ab.T
                X0 = (Qinv @ P).clamp_min_(floor_u)
                Ut = solve(P, Q, X0, sweeps_u, floor=floor_u, delta=0.0)
                S += (Ut @ Ut.T).double()
                R += (Ut @ Ab).double()
            if dist is not None:
                # One collective per pass: the statistics are all that crosses ranks.
                flat = torch.cat([S.reshape(-1), R.reshape(-1), extra])
                dist.all_reduce(flat)
                S = flat[: k * k].reshape(k, k)
                R = flat[k * k : k * k + k * C].reshape(k, C)
                extra = flat[k * k + k * C :]
            if it == 1:
                normA2, n = float(extra[0]), int(extra[1])
                if normA2 == 0.0:
                    warnings.warn(
                        "NMF was fitted on all-zero activations: the concept bank is all zeros and every "
                        "code will be zero; check the layer and the images",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    self.components_ = torch.zeros(k, C, dtype=dtype, device=device)
                    self.n_iter_, self.reconstruction_err_ = 0, 0.0
                    return
                sweeps_w = self._sweep_budget(n, C, k)[1]
            W = solve(R.to(dtype), S.to(dtype), W, sweeps_w, floor=_FLOOR, delta=_DELTA)
            W64 = W.double()
            err2 = normA2 - 2.0 * float((R * W64).sum()) + float((S * (W64 @ W64.T)).sum())
            rel = math.sqrt(max(err2, 0.0) / normA2)
            self.history_.append(rel)
            self.times_.append(time.perf_counter() - t0)
            W = _normalise_rows(torch.ones(k, 1, dtype=dtype, device=device), W)[1]
            if self.verbose and it % 10 == 0:
                print(f"NMF (mini-batch) pass {it}: relative error {rel:.6f}")
            if _converged(self.history_, self.tol):
                break
            if stop_below is not None and rel <= stop_below:
                break
        W = torch.where(W <= 1e3 * _FLOOR, torch.zeros_like(W), W)
        self.components_ = _normalise_rows(torch.ones(k, 1, dtype=dtype, device=device), W)[1]
        self.n_iter_ = it
        self.reconstruction_err_ = self.history_[-1]
        if self.verbose:
            print(f"NMF (mini-batch): {it} passes, relative error {self.reconstruction_err_:.6f}")

    @staticmethod
    def _check_nonnegative(X: torch.Tensor, layer_name: str | None, mn: float | None = None) -> None:
        mn = float(X.min()) if mn is None else mn
        if mn < 0:
            where = f"layer {layer_name!r}" if layer_name else "the activations"
            neg = int((X < 0).sum())
            raise ActivationError(
                f"NMF needs non-negative activations, but {where} has minimum value {mn:.6g} "
                f"({neg} of {X.numel()} entries are negative). Choose a layer after a ReLU-like "
                'activation (outputs ≥ 0), or use method="pca" (or "kmeans"), which accept signed '
                "activations."
            )

    # -- encoding -----------------------------------------------------------------------------
    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        """NNLS codes ``U [n, k] = argmin_{U≥0} ‖A − U W‖`` with the bank frozen (same solver as fit)."""
        return nnls_codes(A, self.components_.to(A.device), getattr(self, "solver", "hals"))
