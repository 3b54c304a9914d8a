"""Non-negative matrix factorisation (NMF) by accelerated HALS, in torch.

Notation (as in :mod:`conceptlens.decompose.base`):

=====  ==========  ==============================================================
``A``  ``[n, C]``  non-negative activations, one row per spatial position or image
``W``  ``[k, C]``  the concept bank ``components_``; each row has unit ℓ2 norm after fit
``U``  ``[n, k]``  non-negative concept coefficients, ``A ≈ U @ W``
=====  ==========  ==============================================================

Model: ``min ½‖A − U W‖²_F  s.t.  U ≥ 0, W ≥ 0``.

Both halves of an alternating step are the same non-negative quadratic problem in a *row-block*
form, which is what the solvers solve::

    min_{X ≥ 0}  ½ tr(Xᵀ Q X) − tr(Pᵀ X)        X [k, m], Q [k, k] (Gram), P [k, m] (cross term)

* updating ``U`` with ``W`` fixed: ``X = Uᵀ [k, n]``, ``Q = W Wᵀ``, ``P = W Aᵀ``;
* updating ``W`` with ``U`` fixed: ``X = W [k, C]``, ``Q = Uᵀ U``, ``P = Uᵀ A``.

The expensive products ``P`` and ``Q`` are computed once per half-step and then reused by several
cheap inner sweeps (Gillis & Glineur, *Accelerated multiplicative updates and hierarchical ALS
algorithms for NMF*, Neural Computation 2012). Encoding new activations is the very same solver with
the bank frozen: a non-negative least-squares problem, never an unconstrained pseudo-inverse.

This module holds the estimator; its parts live beside it: the solvers and the stopping rule in
:mod:`~conceptlens.decompose._nmf_solvers`, the encoder (NNLS to a per-row KKT tolerance, exact finish) in
:mod:`~conceptlens.decompose._nmf_encode`, the dense/sparse products with ``A`` in
:mod:`~conceptlens.decompose._nmf_products`, the NNDSVD start in :mod:`~conceptlens.decompose._nmf_init`
and the tuning constants, with why, in :mod:`~conceptlens.decompose._nmf_tuning`. Their public names are
re-exported here; measured speed and error against scikit-learn are in ``bench/results/nmf.json``
(``conceptlens bench nmf``) and the README.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch

from conceptlens._check import check_float, check_int
from conceptlens._threads import one_thread_pool, small_ops, threads
from conceptlens.decompose._nmf_encode import nnls_codes
from conceptlens.decompose._nmf_init import INITS, nndsvd_init, top_svd
from conceptlens.decompose._nmf_products import DataProducts, cross_product
from conceptlens.decompose._nmf_solvers import (
    SOLVERS,
    Solver,
    converged,
    hals,
    mu,
    normalise_rows,
    sweep_budget,
)
from conceptlens.decompose._nmf_split import RowBlocks
from conceptlens.decompose._nmf_tuning import (
    DEFAULT_TOL,
    DELTA,
    FLOOR,
    POWER_ITERS,
    SPARSE_DENSITY,
    STORE_BATCH,
)
from conceptlens.decompose.base import Decomposition, as_rows, check_finite, register
from conceptlens.errors import (
    ActivationError,
    ConvergenceWarning,
    DegenerateConceptsWarning,
    ParameterError,
    warn_user,
)

__all__ = [
    "NMF",
    "DEFAULT_TOL",
    # the solvers (one signature) and the frozen-bank encoder
    "Solver",
    "SOLVERS",
    "hals",
    "mu",
    "nnls_codes",
    "converged",
    "sweep_budget",
    "normalise_rows",
    # initialisation and the products with A (public for the benchmark and for tests)
    "INITS",
    "nndsvd_init",
    "top_svd",
    "DataProducts",
    "cross_product",
    "POWER_ITERS",
    "SPARSE_DENSITY",
    "SMALL_FIT",
]

#: An in-memory fit with ``n · C · k`` below this runs in one thread (see ``NMF._small_in_one_thread``).
SMALL_FIT = 200_000_000


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
        worth less than 0.1 % by then, are skipped. A looser ``tol=1e-3`` is faster, but NMF runs can
        crawl along a plateau and then drop, and ``1e-3`` can stop on the plateau (the README's NMF
        section and ``bench/results/nmf.json`` give the numbers). ``0`` runs all ``max_iter``
        iterations.
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
    converged_ : bool
        The stopping rule ended the fit (False: ``max_iter`` did, with a :class:`ConvergenceWarning`;
        concepts never used or duplicated give a :class:`DegenerateConceptsWarning`; ``fit_encode`` returns
        the fit's own codes).
    reconstruction_err_ : float
        Relative Frobenius error ``‖A − UW‖_F / ‖A‖_F`` on the training data.
    history_ : list of float
        Relative error after each outer iteration.
    times_ : list of float
        Seconds since the start of ``fit`` at each entry of ``history_`` (initialisation included).
    sparse_used_ : bool
        Whether the batch fit's products with ``A`` used CSR copies (not set by the mini-batch fit).

    Examples
    --------
    >>> d = NMF(n_concepts=10, seed=0).fit(A)        # A [n, C] or [N, h, w, C], A ≥ 0
    >>> U = d.encode(A)                              # [..., 10], ≥ 0
    """

    nonnegative = True
    label = "NMF"
    quick_params: ClassVar[Mapping[str, Any]] = {"max_iter": 100}
    encode_checks_finite = True  # nnls_codes checks its product W Aᵀ
    # -- hooks for the benchmark and the tests (not constructor arguments, so neither saved nor in
    #    get_params); set them on an instance before fit ------------------------------------------
    #: ``True``: CSR products with ``A``; ``False``: dense; ``None``: by density (see :class:`DataProducts`).
    #: After a batch fit, ``sparse_used_`` says which products ran.
    sparse_products: bool | None = None
    #: Stop as soon as the relative error reaches this value (the benchmark's "time to 1 %" runs).
    stop_below: float | None = None

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
        check_float("tol", self.tol, 0.0, hint="0 runs all max_iter iterations")
        check_int("max_iter", self.max_iter, 1)
        if self.init not in INITS:
            raise ParameterError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")
        if self.solver not in SOLVERS:
            raise ParameterError(f"solver must be one of {', '.join(SOLVERS)}; got {self.solver!r}")
        if self.inner_sweeps is not None:
            check_int("inner_sweeps", self.inner_sweeps, 1, hint="or None for the automatic budget")
        check_int("seed", self.seed)
        b = getattr(self, "batch_size", None)
        if b is not None:
            check_int("batch_size", b, 1, hint="or None to fit on the whole matrix at once")

    def _sweep_budget(self, n: int, C: int, k: int, density: float = 1.0) -> tuple[int, int]:
        """Maximum inner sweeps for the U half-step and the W half-step (``density``: the fraction of
        non-zeros of ``A`` when its products are sparse, which makes them cheaper)."""
        if self.inner_sweeps is not None:
            return self.inner_sweeps, self.inner_sweeps
        return sweep_budget(n, C, k, density)

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
            with self._small_in_one_thread(A):
                self._fit_rows(A, layer_name)
        return self

    def _small_in_one_thread(self, A: torch.Tensor) -> AbstractContextManager[int]:
        """One thread for an in-memory fit smaller than :data:`SMALL_FIT` (``n · C · k``), else as it is.

        Measured on 2 cores: the demo's ICE fit (5,733 × 1,280, k = 10) took 0.055 s with two threads and
        0.065 s with one alone, but 0.12-3.4 s with two and 0.09-0.16 s with one beside a busy 2-thread
        process. A larger fit keeps the process's threads, as one-thread workers over blocks of rows
        (:mod:`~conceptlens.decompose._nmf_split`). The rule reads the problem's size only, never the load.
        """
        return small_ops() if A.numel() * self.n_concepts < SMALL_FIT else threads(None)

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
        with self._small_in_one_thread(A):
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
        data = DataProducts(X, self.sparse_products)
        # float64 accumulation: a float32 reduction over n·C entries drifts by ~0.1 % at n·C ≈ 10⁷.
        # With CSR copies only the non-zeros are summed.
        nz = data._csr.values() if data.sparse else X
        normA2 = float(torch.linalg.vector_norm(nz, dtype=torch.float64)) ** 2
        self.history_: list[float] = []
        self.times_: list[float] = []
        if normA2 == 0.0:
            warn_user(
                "NMF was fitted on all-zero activations: the concept bank is all zeros and every code "
                "will be zero; check the layer and the images",
                RuntimeWarning)
            self.components_ = torch.zeros(k, C, dtype=dtype, device=X.device)
            self.n_iter_, self.reconstruction_err_ = 0, 0.0
            return torch.zeros(k, n, dtype=dtype, device=X.device), lead

        solve = SOLVERS[self.solver]
        floor_w = FLOOR
        floor_u = FLOOR * hi
        dens = data.density if data.sparse else 1.0
        sweeps_u, sweeps_w = self._sweep_budget(n, C, k, dens)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.max_iter, desc=f"NMF k={k}", unit="it", disable=True if not self.progress else None
        )
        it = 0
        stop_below = self.stop_below
        self.sparse_used_ = data.sparse
        # a CPU fit with several threads: blocks of rows in one-thread workers (see _nmf_split)
        parts = torch.get_num_threads() if X.device.type == "cpu" else 1
        with bar, one_thread_pool(parts, "nmf") as pool:
            blocks = RowBlocks(data, pool, parts) if pool is not None else None
            Ut, W = nndsvd_init(X, k, self.init, self.seed, sparse=data.sparse, power_iters=POWER_ITERS,
                                data=blocks or data)
            Ut, W = normalise_rows(Ut.clamp_min(floor_u), W.clamp_min(floor_w))
            for it in range(1, self.max_iter + 1):
                if blocks is not None:  # U half-step and the W half-step's products, block by block
                    Ut, R, S = blocks.u_half_step(solve, Ut, W, sweeps_u, floor=floor_u, delta=DELTA)
                else:  # U half-step: products once, then cheap sweeps; the W half-step's products
                    Ut = solve(data.mm(W.T).T.contiguous(), W @ W.T, Ut, sweeps_u, floor=floor_u, delta=DELTA)
                    R, S = data.rmm(Ut.T).T.contiguous(), Ut @ Ut.T
                W = solve(R, S, W, sweeps_w, floor=floor_w, delta=DELTA)
                # ‖A − UW‖² from the Gram products already at hand: ‖A‖² − 2⟨UᵀA, W⟩ + ⟨UᵀU, WWᵀ⟩.
                err2 = normA2 - 2.0 * float((R * W).sum()) + float((S * (W @ W.T)).sum())
                rel = math.sqrt(max(err2, 0.0) / normA2)
                self.history_.append(rel)
                self.times_.append(time.perf_counter() - t0)
                Ut, W, R = normalise_rows(Ut, W, R)
                bar.update(1)
                bar.set_postfix(rel_err=f"{rel:.5f}", refresh=False)
                if self.verbose and it % 10 == 0:
                    bar.write(f"NMF iteration {it}: relative error {rel:.6f}")
                if converged(self.history_, self.tol):
                    break
                if stop_below is not None and rel <= stop_below:
                    break

        # Entries held at the floor are zeros of the exact problem.
        W = torch.where(W <= 1e3 * floor_w, torch.zeros_like(W), W)
        Ut = torch.where(Ut <= 1e3 * floor_u, torch.zeros_like(Ut), Ut)
        Ut, W, R = normalise_rows(Ut, W, R)
        self.components_ = W
        self.n_iter_ = it
        self.reconstruction_err_ = self._final_error(X, data, Ut, W, normA2, R)
        if self.verbose:
            print(f"NMF: {it} iterations, relative error {self.reconstruction_err_:.6f}")
        self.converged_ = converged(self.history_, self.tol) or (
            stop_below is not None and bool(self.history_) and self.history_[-1] <= stop_below)
        self._warn(Ut, W)
        return Ut, lead

    def _warn(self, Ut: torch.Tensor, W: torch.Tensor) -> None:
        """ConvergenceWarning when ``max_iter`` ended the fit; DegenerateConceptsWarning for concepts whose
        codes ``Ut [k, n]`` are zero on every row or whose bank rows ``W [k, C]`` repeat another's."""
        if not self.converged_ and self.n_iter_ >= self.max_iter and len(self.history_) > 1:
            drop = self.history_[-2] - self.history_[-1]
            warn_user(f"NMF stopped at max_iter={self.max_iter} before its stopping rule "
                          f"(tol={self.tol}) was met: the relative error {self.history_[-1]:.5f} still fell "
                          f"by {drop:.2e} in the last iteration; raise max_iter for a converged bank",
                          ConvergenceWarning)
        dead = torch.nonzero(Ut.amax(1) <= 0).flatten().tolist()
        norms = W.norm(dim=1, keepdim=True).clamp_min(1e-30)
        cos = (W / norms) @ (W / norms).T
        cos.fill_diagonal_(0)
        dup = sorted({(min(i, j), max(i, j)) for i, j in torch.nonzero(cos > 0.999).tolist()})
        if dead or dup:
            warn_user(f"NMF with k={W.shape[0]}: "
                          + (f"concepts {dead} have zero codes on every row (k may exceed the data's rank; "
                             "their bank rows are arbitrary)" if dead else "")
                          + ("; " if dead and dup else "")
                          + (f"concept pairs {dup} are duplicates (cosine > 0.999)" if dup else "")
                          + " — use fewer concepts", DegenerateConceptsWarning)

    @staticmethod
    def _final_error(
        X: torch.Tensor, data: DataProducts, Ut: torch.Tensor, W: torch.Tensor, normA2: float,
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
            b = self.batch_size or STORE_BATCH
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
        W = nndsvd_init(first, k, self.init, self.seed)[1].clamp_min(FLOOR)
        W = normalise_rows(torch.ones(k, 1, dtype=dtype, device=device), W)[1]
        top = torch.tensor([float(first.max())], dtype=dtype, device=device)
        if dist is not None:
            dist.broadcast(W, src=0)
            dist.broadcast(top, src=0)
        floor_u = FLOOR * max(float(top[0]), 1e-30)
        sweeps_u = self._sweep_budget(min(b, first.shape[0]) if dist is None else b, C, k)[0]
        del first

        self.history_, self.times_ = [], []
        normA2, n, sweeps_w = 0.0, 0, 1
        it = 0
        stop_below = self.stop_below
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
                    warn_user(
                        "NMF was fitted on all-zero activations: the concept bank is all zeros and every "
                        "code will be zero; check the layer and the images",
                        RuntimeWarning)
                    self.components_ = torch.zeros(k, C, dtype=dtype, device=device)
                    self.n_iter_, self.reconstruction_err_ = 0, 0.0
                    return
                sweeps_w = self._sweep_budget(n, C, k)[1]
            W = solve(R.to(dtype), S.to(dtype), W, sweeps_w, floor=FLOOR, delta=DELTA)
            W64 = W.double()
            err2 = normA2 - 2.0 * float((R * W64).sum()) + float((S * (W64 @ W64.T)).sum())
            rel = math.sqrt(max(err2, 0.0) / normA2)
            self.history_.append(rel)
            self.times_.append(time.perf_counter() - t0)
            W = normalise_rows(torch.ones(k, 1, dtype=dtype, device=device), W)[1]
            if self.verbose and it % 10 == 0:
                print(f"NMF (mini-batch) pass {it}: relative error {rel:.6f}")
            if converged(self.history_, self.tol):
                break
            if stop_below is not None and rel <= stop_below:
                break
        W = torch.where(W <= 1e3 * FLOOR, torch.zeros_like(W), W)
        self.components_ = normalise_rows(torch.ones(k, 1, dtype=dtype, device=device), W)[1]
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

