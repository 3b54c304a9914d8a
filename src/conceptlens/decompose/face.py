"""FACE: non-negative matrix factorisation regularised by the classifier's predictions (KL-NMF).

Notation (as in :mod:`conceptlens.decompose.base`, plus the image structure the head needs):

=========  =================  ===================================================================
``A``      ``[N, *S, C]``     non-negative activations of ``N`` images (``S = (h, w)`` for a spatial
                              layer, ``S = ()`` when each image is one row); ``n = N · |S|`` rows
``W``      ``[k, C]``         the concept bank ``components_``; rows of unit ℓ2 norm after fit
``U``      ``[N, *S, k]``     non-negative coefficients, ``Â = U W`` (row-wise)
``h``      ``[B, *S, C]``     the classifier head (``ModelSplit.h``) → logits ``[B, K]``
``p_i``    ``[K]``            ``softmax h(A_i)``, the model's prediction for image ``i``
``q_i``    ``[K]``            ``softmax h(Â_i)``, its prediction seen through the concepts
=========  =================  ===================================================================

Objective (Bhusal et al., *FACE: Faithful Automatic Concept Extraction*, arXiv 2510.11675), with the
scaling of the authors' code, so that ``kl_weight = λ`` means what it means in the paper::

    L(U, W) = MSE + λ · KL̄,   MSE = ‖A − U W‖²_F / (n C),   KL̄ = (1/N) Σ_i KL(p_i ‖ q_i),   U, W ≥ 0

(MSE is a *mean over entries*, the KL a *mean over images*: PyTorch's ``mse_loss`` and
``kl_div(reduction="batchmean")``.) Equivalently, in the paper's written form,
``(n C / 2) · L = ½‖A − U W‖²_F + μ Σ_i KL(p_i ‖ q_i)`` with ``μ = λ · |S| · C / 2`` per image; the solver
works on that form. The head acts on whole images, so the KL term couples all the rows of one image.

Solver (``solver="hals"``, the default): start from our NMF solution, then alternate a step on ``U`` and
a step on ``W``. Each step is a *forward–backward* (proximal-gradient) step in which the quadratic
Frobenius part is kept exactly and only the KL part is linearised::

    X⁺ = argmin_{X ≥ 0}  ½‖A − U W‖²_F + ⟨∇_X μΣKL, X − X₀⟩ + (L/2)‖X − X₀‖²_F

That subproblem is the same non-negative quadratic that HALS solves for plain NMF, with the target
shifted by the KL gradient (``A − Γ``, ``Γ = μ ∂ΣKL/∂Â``) and ``L·I`` added to the Gram matrix, so it
reuses :func:`conceptlens.decompose.nmf.hals`. ``L`` is found by backtracking until the linearisation
plus ``(L/2)‖ΔX‖²`` majorises the KL at the new point, which guarantees that every accepted step
decreases the total objective (monotone, unlike Adam). The KL gradient is computed by autograd through
``h``, mini-batched over images (``batch_images`` per call; the gradient is exact, not stochastic).

``solver="adam"`` is the authors' optimiser, kept as a baseline: NNDSVD init, Adam on ``U`` and ``W``
jointly (lr 5e-4), both clamped at 0 after each step.

Encoding new activations solves the NMF non-negative least squares with ``W`` frozen (never a
pseudo-inverse projection), as the authors project new images: no KL term, so that codes of new images
owe nothing to the model's predictions on them. On request (``encode_kl_steps > 0``, a head attached,
``kl_weight > 0``) a few of the fit's ``U`` steps on the full objective follow (the fit solver with the
bank frozen; ``U`` stays ≥ 0).

With ``batch_size`` (and always from an :class:`~conceptlens.io.store.ActivationStore`) the fit runs by
mini-batch passes instead, memory ``O(batch + k·C)``: :mod:`~conceptlens.decompose._face_stream`.

The KL term and the forward–backward step live in :mod:`~conceptlens.decompose._face_kl` (re-exported
here: :class:`KLTerm`, :func:`face_objective`, :func:`check_head`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import torch

from conceptlens._check import check_float, check_int
from conceptlens.decompose._face_kl import (
    Head,
    KLTerm,
    _Point,
    _prox_step,
    check_head,
    face_objective,
    kl_code_steps,
)
from conceptlens.decompose._face_stream import fit_minibatch, minibatch_codes
from conceptlens.decompose._nmf_tuning import STORE_BATCH
from conceptlens.decompose.base import Decomposition, as_rows, register
from conceptlens.decompose.nmf import (
    DELTA,
    FLOOR,
    NMF,
    hals,
    nndsvd_init,
    nnls_codes,
    normalise_rows,
    sweep_budget,
)
from conceptlens.errors import ActivationError, HeadError, ParameterError, warn_user

__all__ = ["FACE", "KLTerm", "face_objective", "check_head"]

_SOLVERS = ("hals", "adam")


# ------------------------------------------------------------------------------------------------
# the estimator
# ------------------------------------------------------------------------------------------------
@register("face")
class FACE(Decomposition):
    """KL-regularised NMF (FACE): concepts that reconstruct ``A`` *and* keep the model's predictions.

    Minimises ``MSE + λ · KL̄`` over ``U, W ≥ 0`` (see the module docstring for the exact scale:
    ``MSE`` is a mean over the ``n·C`` entries, ``KL̄`` a mean over the ``N`` images, as in the authors'
    code, so ``kl_weight`` values from the paper carry over; ``λ = 0`` is NMF).

    Parameters
    ----------
    n_concepts : int
        Number of concepts ``k``.
    kl_weight : float
        ``λ ≥ 0``. The paper: ``1e-5`` already helps on ImageNet; ``≥ 1e3`` hurts. What matters is
        ``λ·KL̄`` against ``MSE``, which depends on the layer: sweep it (``conceptlens sweep --method
        face``; measured curves in ``bench/results/face.json`` and the README).
    head : callable or None
        The classifier head ``h`` (``ModelSplit.h``): ``[B, *S, C] → [B, K]`` logits, differentiable.
        May be attached later with :meth:`set_head` (``ConceptExplainer`` does). Required by ``fit``.
    seed : int
        Seed of the NMF / NNDSVD initialisation; same seed → same result.
    solver : {"hals", "adam"}
        ``"hals"``: NMF start + monotone forward–backward HALS steps (ours, the default).
        ``"adam"``: the authors' Adam with clamping (a baseline).
    max_iter : int or None
        Outer iterations (``None``: 200 for ``"hals"``, 22 000 for ``"adam"`` as in the authors' code).
    tol : float
        Stop when the objective changes by less than ``tol`` (relative) over one iteration.
    lr : float
        Adam's learning rate (``solver="adam"`` only; the authors use 5e-4).
    batch_images : int
        Images per call of the head (memory bound; the gradients are exact sums over all images).
    max_time : float or None
        Wall-clock budget of ``fit`` in seconds (None: no limit); the NMF start counts.
    batch_size : int or None
        ``None``: the in-memory solver on the whole ``A``. An integer: the mini-batch fit
        (:mod:`~conceptlens.decompose._face_stream`), batches of ``batch_size`` rows rounded down to whole
        images: each pass steps every batch's codes with the bank frozen and keeps only ``k × C``
        statistics, then the bank takes one monotone step. Memory ``O(batch + k·C)`` (plus the codes,
        ``2·n·k``, with ``warm_codes``), so ``fit`` also
        accepts an :class:`~conceptlens.io.store.ActivationStore` (default 8192 rows per batch); from a
        tensor with the same ``batch_size`` it gives the same bank. ``solver="hals"`` only.
    code_steps : int
        The mini-batch fit's KL steps on each batch's codes per pass (0: the NNLS codes).
    warm_codes : bool
        The mini-batch fit keeps every row's codes between passes and continues their KL steps (``2·n·k``
        floats, ``2k/C`` of the activations; the explainer keeps the codes after the fit anyway). False:
        each pass starts the codes from NNLS again, memory ``O(batch + k·C)`` exactly, but at larger
        ``λ`` it needs ~10 ``code_steps`` to reach the objective of the warm fit.
    encode_kl_steps : int
        ``U`` steps taken on the full objective (``W`` frozen) after the NNLS encode, when a head is
        attached and ``λ > 0``. 0 (the default, as the authors project new images): the plain NNLS
        codes. Codes fitted against an image's own predictions keep them by construction, so scoring them
        says little about the concepts (issue #20, item 4).
    progress : bool
        Show a tqdm bar over iterations.

    Attributes
    ----------
    components_ : Tensor ``[k, C]``
        Concept bank ``W`` (non-negative, unit-norm rows).
    history_ : list of dict
        One entry per iteration: ``iter``, ``mse``, ``kl``, ``total`` (the objective's scale) and ``time``
        (seconds since ``fit`` started). Entry 0 is the starting point.
    objective_ : dict
        ``mse``, ``kl``, ``total`` of the returned factors.
    n_iter_ : int
        Iterations run.
    reconstruction_err_ : float
        ``‖A − UW‖_F / ‖A‖_F``.
    fit_time_ : float
        Seconds spent in ``fit``.

    Examples
    --------
    >>> split = cl.ModelSplit(model); A = split.g(x)                 # [N, h, w, C], A ≥ 0
    >>> d = FACE(n_concepts=10, kl_weight=1e-3, head=split.h).fit(A)
    >>> U = d.encode(A)                                              # [N, h, w, 10], ≥ 0
    """

    nonnegative: ClassVar[bool] = True
    encode_checks_finite: ClassVar[bool] = True  # nnls_codes checks its product W Aᵀ
    label = "FACE"
    fit_threads = 1  # prox-gradient steps: the λ sweep beside a busy process 26.8 s at 1 thread, 56 s at 2
    uses_head = True
    #: ``fit`` fails without a head (EDDP only uses one when it is there).
    needs_head: ClassVar[bool] = True
    #: ``fit`` accepts an ActivationStore (the mini-batch fit).
    fits_store: ClassVar[bool] = True
    #: What a streamed fit passes to ``fit`` beside the rows: the images' spatial shape and their logits.
    fit_context: ClassVar[tuple[str, ...]] = ("image_shape", "logits")
    sweep_param = "kl_weight"
    quick_params: ClassVar[Mapping[str, Any]] = {"max_iter": 20}

    def __init__(
        self,
        n_concepts: int = 25,
        kl_weight: float = 1e-5,
        head: Head | None = None,
        seed: int = 0,
        *,
        solver: str = "hals",
        max_iter: int | None = None,
        tol: float = 1e-4,
        lr: float = 5e-4,
        batch_images: int = 256,
        max_time: float | None = None,
        batch_size: int | None = None,
        code_steps: int = 1,
        warm_codes: bool = True,
        encode_kl_steps: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(n_concepts=n_concepts, seed=seed)
        self.kl_weight = kl_weight
        self.head = head
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.lr = lr
        self.batch_images = batch_images
        self.max_time = max_time
        self.batch_size = batch_size
        self.code_steps = code_steps
        self.warm_codes = warm_codes
        self.encode_kl_steps = encode_kl_steps
        self.progress = progress

    # -- parameters ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments except the head (a callable, not saved: re-attach it after loading)."""
        p = super().get_params()
        p.pop("head", None)
        return p

    def _check_params(self) -> None:
        check_float("kl_weight", self.kl_weight, 0.0, hint="0 is plain NMF")
        check_float("tol", self.tol, 0.0)
        check_float("lr", self.lr, 0.0, strict_min=True)
        if self.solver not in _SOLVERS:
            raise ParameterError(f"solver must be one of {', '.join(_SOLVERS)}; got {self.solver!r}")
        if self.max_iter is not None:
            check_int("max_iter", self.max_iter, 1, hint="or None for the solver's default")
        if self.max_time is not None:
            check_float("max_time", self.max_time, 0.0, strict_min=True, hint="seconds, or None for no limit")
        check_int("batch_images", self.batch_images, 1)
        check_int("encode_kl_steps", self.encode_kl_steps, 0)
        b = getattr(self, "batch_size", None)  # absent on estimators loaded from older files
        if b is not None:
            check_int("batch_size", b, 1, hint="rows per batch, or None to fit on the whole A at once")
            if self.solver != "hals":
                raise ParameterError(f"batch_size (the mini-batch fit) needs solver='hals', got "
                                     f"{self.solver!r}; drop batch_size for the in-memory {self.solver!r}")
        check_int("code_steps", getattr(self, "code_steps", 2), 0)
        check_int("seed", self.seed)

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, A: Any, layer_name: str | None = None, *, image_shape: tuple[int, ...] | None = None,
            logits: torch.Tensor | None = None) -> FACE:
        """Fit the concept bank on non-negative activations with their image structure.

        Parameters
        ----------
        A : Tensor ``[N, *S, C]`` (e.g. ``[N, h, w, C]``), or a store of its ``N·|S|`` rows
            Non-negative activations; the first axis indexes images (the head's batch axis). A store
            (:class:`~conceptlens.io.store.ActivationStore`, rows image-major) is fitted by the mini-batch
            algorithm (see ``batch_size``) and needs ``image_shape``.
        layer_name : str, optional
            Name of the layer, for error messages.
        image_shape : tuple of int, optional
            ``S`` (e.g. ``(h, w)``) of a store's images (a tensor carries its own).
        logits : Tensor ``[N, K]``, optional
            ``h(A_i)`` per image, e.g. the logits a streamed extraction kept (mini-batch fit only; None:
            computed with the head, batch by batch).

        Returns
        -------
        FACE
            ``self``, with ``components_``, ``history_``, ``objective_``, ``n_iter_``.
        """
        if self._streamed(A):
            self._fit_minibatch(A, layer_name, image_shape, logits)
        else:
            self._fit(A, layer_name)
        return self

    def _streamed(self, A: Any) -> bool:
        return not isinstance(A, torch.Tensor) or getattr(self, "batch_size", None) is not None

    def fit_encode(self, A: torch.Tensor, layer_name: str | None = None) -> torch.Tensor:
        """Fit on ``A [N, *S, C]`` and return the fitted coefficients ``U [N, *S, k]`` (≥ 0).

        With ``batch_size`` (the mini-batch fit): the codes that fit solves at its final bank.
        """
        if self._streamed(A):
            if not isinstance(A, torch.Tensor):
                raise ParameterError("fit_encode needs the activations in memory; for a store call "
                                     "fit(store, image_shape=...) and then encode(batch) per batch")
            codes = self._fit_minibatch(A, layer_name, None, None)
            if codes is not None:  # the fit's own codes (warm_codes)
                return codes.T.reshape(*A.shape[:-1], codes.shape[0])
            return minibatch_codes(A, self.components_, head=cast(Head, self.head),
                                   kl_weight=float(self.kl_weight), batch_size=int(self.batch_size),
                                   code_steps=self.code_steps, batch_images=self.batch_images)
        Ut, lead = self._fit(A, layer_name)
        return Ut.T.reshape(*lead, Ut.shape[0])

    def _fit_minibatch(self, A: Any, layer_name: str | None, image_shape: tuple[int, ...] | None,
                       logits: torch.Tensor | None) -> torch.Tensor | None:
        """The mini-batch fit; returns its codes ``Uᵀ [k, n]`` with ``warm_codes`` (else None)."""
        t0 = time.perf_counter()
        self._check_params()
        if isinstance(A, torch.Tensor):
            self._validate(A)
            if A.ndim < 2:
                raise ActivationError(f"FACE needs activations [N, *S, C] with an image axis first, got "
                                      f"shape {list(A.shape)}")
        self.history_ = []

        def record(it: int, mse: float, kl: float, total: float) -> None:
            self.history_.append({"iter": it, "mse": mse, "kl": kl, "total": total,
                                  "time": time.perf_counter() - t0})

        max_iter = 200 if self.max_iter is None else self.max_iter
        with self._bar(max_iter) as bar:
            W, info = fit_minibatch(
                A, n_concepts=self.n_concepts, seed=self.seed, head=self.head,
                kl_weight=float(self.kl_weight), batch_size=self.batch_size or STORE_BATCH,
                code_steps=self.code_steps, batch_images=self.batch_images,
                warm_codes=bool(getattr(self, "warm_codes", True)), max_iter=max_iter,
                tol=float(self.tol), image_shape=image_shape, logits=logits, layer_name=layer_name,
                deadline=None if self.max_time is None else t0 + float(self.max_time), record=record,
                bar=bar)
        self.components_ = W
        self.image_shape_ = tuple(A.shape[1:-1]) if isinstance(A, torch.Tensor) else tuple(image_shape or ())
        self.n_iter_, self.n_rejected_ = int(info["n_iter"]), int(info["rejected"])
        last = self.history_[-1] if self.history_ else {"mse": 0.0, "kl": 0.0, "total": 0.0}
        self.objective_ = {key: float(last[key]) for key in ("mse", "kl", "total")}
        self.reconstruction_err_ = (math.sqrt(info["err2"] / info["normA2"]) if info["normA2"] > 0 else 0.0)
        self.fit_time_ = time.perf_counter() - t0
        return info["codes"]

    def _fit(self, A: torch.Tensor, layer_name: str | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        t0 = time.perf_counter()
        self._check_params()
        rows = self._validate(A)
        if A.ndim < 2:
            raise ActivationError(
                f"FACE needs activations [N, *S, C] with an image axis first, got shape {list(A.shape)}"
            )
        lead = tuple(A.shape[:-1])
        self.image_shape_ = tuple(A.shape[1:-1])
        dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        X = rows.detach().to(dtype)
        NMF._check_nonnegative(X, layer_name)
        A_img = X.reshape(A.shape)
        check_head(self.head, A_img[: min(2, A.shape[0])])
        head = cast(Head, self.head)  # check_head raised when it is None

        n, C = X.shape
        k = self.n_concepts
        self.history_: list[dict[str, float]] = []
        if float(X.abs().max()) == 0.0:
            warn_user(
                "FACE was fitted on all-zero activations: the concept bank is all zeros; check the layer",
                RuntimeWarning)
            self.components_ = torch.zeros(k, C, dtype=dtype, device=X.device)
            self.n_iter_, self.reconstruction_err_ = 0, 0.0
            self.objective_ = {"mse": 0.0, "kl": 0.0, "total": 0.0}
            self.fit_time_ = time.perf_counter() - t0
            return torch.zeros(k, n, dtype=dtype, device=X.device), lead

        term = KLTerm(head, A_img, self.batch_images)
        deadline = None if self.max_time is None else t0 + float(self.max_time)
        if self.solver == "adam":
            Ut, W = self._solve_adam(X, term, t0, deadline)
        else:
            Ut, W = self._solve_hals(X, term, t0, deadline)

        Ut, W = normalise_rows(Ut, W)
        self.components_ = W
        A_hat = Ut.T @ W
        f64 = torch.float64
        mse = float(torch.linalg.vector_norm(X - A_hat, dtype=f64)) ** 2 / X.numel()
        kl = float(term.value(A_hat).mean())
        self.objective_ = {"mse": mse, "kl": kl, "total": mse + float(self.kl_weight) * kl}
        self.reconstruction_err_ = math.sqrt(mse * X.numel()) / float(torch.linalg.vector_norm(X, dtype=f64))
        self.fit_time_ = time.perf_counter() - t0
        return Ut, lead

    def _record(self, it: int, X: torch.Tensor, A_hat: torch.Tensor, kl: torch.Tensor, t0: float,
                factors: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> float:
        mse = _squared_error(X, A_hat, factors) / X.numel()
        klm = float(kl.mean())
        total = mse + float(self.kl_weight) * klm
        self.history_.append(
            {"iter": it, "mse": mse, "kl": klm, "total": total, "time": time.perf_counter() - t0}
        )
        return total

    def _bar(self, total: int) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"FACE k={self.n_concepts}", unit="it",
                    disable=True if not self.progress else None)

    def _solve_hals(
        self, X: torch.Tensor, term: KLTerm, t0: float, deadline: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, C = X.shape
        N, k = term.shape[0], self.n_concepts
        lam = float(self.kl_weight)
        mu = lam * n * C / (2.0 * N)  # the μ of ½‖A − UW‖² + μ Σ_i KL_i, which equals (nC/2)·objective
        nmf = NMF(n_concepts=k, seed=self.seed)
        Ut = nmf.fit_encode(X).T.contiguous()
        W = nmf.components_
        sweeps_u, sweeps_w = sweep_budget(n, C, k)
        floor_u, floor_w = FLOOR * float(X.max()), FLOOR
        Ut, W = normalise_rows(Ut.clamp_min(floor_u), W.clamp_min(floor_w))

        A_hat = Ut.T @ W
        if mu > 0:
            pt = _Point(*term.value_and_grad_op(A_hat, Ut, W), A_hat)
        else:  # λ = 0: plain HALS, the head is only needed for the reported KL
            pt = _Point(term.value(A_hat), None, A_hat)
        normX2 = float(torch.linalg.vector_norm(X, dtype=torch.float64)) ** 2
        prev = self._record(0, X, A_hat, pt.kl, t0, (Ut, W, normX2))
        max_iter = 200 if self.max_iter is None else self.max_iter
        Lu = Lw = 0.0
        it = 0
        with self._bar(max_iter) as bar:
            for it in range(1, max_iter + 1):
                if mu > 0:
                    Ut, pt, Lu, _ = _prox_step(X, Ut, W, "u", term, mu, pt, Lu, sweeps_u, floor_u)
                    W, pt, Lw, _ = _prox_step(X, Ut, W, "w", term, mu, pt, Lw, sweeps_w, floor_w)
                    # Let L shrink again: the curvature far from the start is usually smaller.
                    Lu, Lw = 0.5 * Lu, 0.5 * Lw
                else:
                    Ut = hals(W @ X.T, W @ W.T, Ut, sweeps_u, floor=floor_u, delta=DELTA)
                    W = hals(Ut @ X, Ut @ Ut.T, W, sweeps_w, floor=floor_w, delta=DELTA)
                    A_hat = Ut.T @ W
                    pt = _Point(term.value(A_hat), pt.grad, A_hat)
                Ut, W = normalise_rows(Ut, W)
                total = self._record(it, X, pt.A_hat, pt.kl, t0, (Ut, W, normX2))
                bar.update(1)
                bar.set_postfix(objective=f"{total:.6g}", refresh=False)
                if prev - total <= self.tol * abs(prev):
                    break
                prev = total
                if deadline is not None and time.perf_counter() >= deadline:
                    break
        self.n_iter_ = it
        # Entries held at the floor are zeros of the exact problem (as in NMF).
        W = torch.where(W <= 1e3 * floor_w, torch.zeros_like(W), W)
        Ut = torch.where(Ut <= 1e3 * floor_u, torch.zeros_like(Ut), Ut)
        return Ut, W

    def _solve_adam(
        self, X: torch.Tensor, term: KLTerm, t0: float, deadline: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, C = X.shape
        N, k = term.shape[0], self.n_concepts
        lam = float(self.kl_weight)
        Ut, W = nndsvd_init(X, k, "nndsvd", self.seed)
        U = Ut.T.contiguous()
        # Adam with PyTorch's defaults (β = 0.9, 0.999; ε = 1e-8), written out: the same updates as
        # torch.optim.Adam without its first-call import of torch._dynamo (seconds), which would
        # distort objective-versus-time comparisons.
        b1, b2, eps, lr = 0.9, 0.999, 1e-8, float(self.lr)
        moments = [(torch.zeros_like(U), torch.zeros_like(U)), (torch.zeros_like(W), torch.zeros_like(W))]
        max_iter = 22_000 if self.max_iter is None else self.max_iter
        prev = math.inf
        it = 0
        with self._bar(max_iter) as bar:
            for it in range(1, max_iter + 1):
                A_hat = U @ W
                if lam > 0:
                    kl, g = term.value_and_grad(A_hat)
                else:
                    kl, g = term.value(A_hat), None
                total = self._record(it - 1, X, A_hat, kl, t0)
                # ∂(MSE + λ KL̄)/∂Â, then the chain rule to U and W (what autograd would give).
                dA = (2.0 / (n * C)) * (A_hat - X)
                if g is not None:
                    dA = dA + (lam / N) * g
                grads = (dA @ W.T, U.T @ dA)
                c1, c2 = 1.0 - b1**it, 1.0 - b2**it
                for P, G, (m, v) in zip((U, W), grads, moments, strict=True):
                    m.mul_(b1).add_(G, alpha=1.0 - b1)
                    v.mul_(b2).addcmul_(G, G, value=1.0 - b2)
                    P.addcdiv_(m, (v / c2).sqrt_().add_(eps), value=-lr / c1)
                    P.clamp_(min=0)  # the authors' projection
                bar.update(1)
                if math.isfinite(prev) and abs(prev - total) <= self.tol * abs(prev):
                    break
                prev = total
                if deadline is not None and time.perf_counter() >= deadline:
                    break
        self.n_iter_ = it
        return U.T.contiguous(), W

    # -- encoding -----------------------------------------------------------------------------
    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        """Non-negative least-squares codes ``U [n, k]`` with the bank frozen (no KL: rows have no images)."""
        return nnls_codes(A, self.components_.to(A.device))

    def encode(self, A: torch.Tensor) -> torch.Tensor:
        """Coefficients ``U [N, *S, k] ≥ 0`` of ``A [N, *S, C]`` with the bank frozen.

        The NNLS codes of NMF (the default), followed, when a head is attached, ``kl_weight > 0`` and
        ``encode_kl_steps > 0`` (opt-in), by that many monotone forward–backward steps on the full FACE
        objective in ``U`` (the fit's ``U`` step). The first axis of ``A`` must index images for those.

        Parameters
        ----------
        A : Tensor ``[N, *S, C]`` or ``[n, C]``

        Returns
        -------
        Tensor ``[N, *S, k]``
        """
        U = super().encode(A)
        # The KL steps need whole images of the fit's shape; rows or other layouts get the NNLS codes.
        same = tuple(A.shape[1:-1]) == getattr(self, "image_shape_", tuple(A.shape[1:-1]))
        if self.head is None or float(self.kl_weight) <= 0 or self.encode_kl_steps <= 0 or not same:
            return U
        rows, lead = as_rows(A)
        W = self.components_
        X = rows.detach().to(W.dtype)
        if X.shape[0] == 0 or float(X.abs().max()) == 0.0:
            return U
        A_img = X.reshape(A.shape)
        try:
            term = KLTerm(self.head, A_img, self.batch_images)
        except Exception as e:
            raise HeadError(
                f"the head failed on activations of shape {list(A.shape)} while encoding ({e}); pass A "
                "with its image structure [N, *S, C] or set encode_kl_steps=0"
            ) from e
        n, C = X.shape
        mu = float(self.kl_weight) * n * C / (2.0 * A.shape[0])
        Ut = U.reshape(-1, U.shape[-1]).T.contiguous()
        sweeps = max(sweep_budget(n, C, W.shape[0])[0], 1)
        Ut, _ = kl_code_steps(X, Ut, W, term, mu, self.encode_kl_steps, sweeps)
        return Ut.T.reshape(*lead, Ut.shape[0])


def _squared_error(
    X: torch.Tensor, A_hat: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor, float] | None
) -> float:
    """``‖X − Â‖²`` in float64 for ``X, Â [n, C]``.

    With ``factors = (Uᵀ [k, n], W [k, C], ‖X‖²)`` (``Â = U W``), from the Gram products ``‖X‖² − 2⟨UᵀX, W⟩ +
    ⟨UᵀU, WWᵀ⟩`` (``[k, ·]`` products instead of a pass over ``[n, C]``) while the error is large enough
    (over 4 % of ``‖X‖²``) for their float32 rounding to stay below 1e-5 of it, as in NMF; else, and
    without factors, from the residual itself (float64 accumulation: a float32 norm over millions of
    entries was off by 0.15 %, measured).
    """
    if factors is not None:
        Ut, W, normX2 = factors
        d = torch.float64
        err2 = (normX2 - 2.0 * float(((Ut @ X).to(d) * W.to(d)).sum())
                + float(((Ut @ Ut.T).to(d) * (W @ W.T).to(d)).sum()))
        if err2 > 0.04 * normX2:
            return err2
    return float(torch.linalg.vector_norm(X - A_hat, dtype=torch.float64)) ** 2
