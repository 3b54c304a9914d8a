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

Encoding new activations solves the NMF non-negative least squares with ``W`` frozen and then, when a
head is attached and ``kl_weight > 0``, a few of the same ``U`` steps of the fit (the fit solver with the
bank frozen; ``U`` stays ≥ 0; never a pseudo-inverse projection).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import torch

from conceptlens.decompose.base import Decomposition, as_rows, register
from conceptlens.decompose.nmf import NMF, hals, nndsvd_init, nnls_codes
from conceptlens.errors import ActivationError, HeadError, ParameterError

__all__ = ["FACE", "KLTerm", "face_objective", "check_head"]

Head = Callable[[torch.Tensor], torch.Tensor]

_SOLVERS = ("hals", "adam")
_FLOOR = 1e-10  # as in nmf.py: keeps Gram diagonals positive while fitting
_MAX_BACKTRACK = 40
_DELTA = 0.1  # inner HALS sweeps stop once a sweep changes X by < 10 % of the first sweep's change
# Float noise allowance when testing the majorisation: the KL is evaluated in float32 by most heads.
_SLACK = 1e-7


# ------------------------------------------------------------------------------------------------
# the head and the KL term
# ------------------------------------------------------------------------------------------------
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
    """

    def __init__(self, head: Head, A: torch.Tensor, batch_images: int = 64) -> None:
        self.head = head
        self.shape = tuple(A.shape)
        self.batch = max(int(batch_images), 1)
        N = A.shape[0]
        logp = []
        with torch.no_grad():
            for i in range(0, N, self.batch):
                logp.append(torch.log_softmax(head(A[i : i + self.batch]).to(torch.float64), dim=1))
        self.logp = torch.cat(logp)  # [N, K]
        self.p = self.logp.exp()
        # Σ_j p_j log p_j with 0·log 0 = 0 (p_j can underflow to exactly 0).
        self.neg_entropy = torch.where(self.p > 0, self.p * self.logp, torch.zeros_like(self.p)).sum(1)

    def _kl(self, logits: torch.Tensor, sl: slice) -> torch.Tensor:
        logq = torch.log_softmax(logits.to(torch.float64), dim=1)
        return self.neg_entropy[sl] - (self.p[sl] * logq).sum(1)

    def value(self, A_hat: torch.Tensor) -> torch.Tensor:
        """Per-image ``KL(p_i ‖ q_i)`` ``[N]`` (float64) for ``A_hat [N, *S, C]`` or its rows ``[n, C]``."""
        Ah = A_hat.reshape(self.shape)
        out = []
        with torch.no_grad():
            for i in range(0, self.shape[0], self.batch):
                sl = slice(i, i + self.batch)
                out.append(self._kl(self.head(Ah[sl]), sl))
        return torch.cat(out)

    def value_and_grad(self, A_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image KL ``[N]`` (float64) and ``∂ Σ_i KL_i / ∂Â`` with the shape and dtype of ``A_hat``."""
        Ah = A_hat.detach().reshape(self.shape)
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
        return torch.cat(out), grad.reshape(A_hat.shape)


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


def _normalise(Ut: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm rows of ``W``, scale moved into ``Uᵀ`` (``UW`` and the objective unchanged)."""
    norms = torch.linalg.vector_norm(W, dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return Ut * norms[:, None], W / norms[:, None]


# ------------------------------------------------------------------------------------------------
# the forward–backward step shared by fit and encode
# ------------------------------------------------------------------------------------------------
class _Point:
    """The KL state at the current iterate: per-image KL ``[N]``, ``∂ΣKL/∂Â`` ``[n, C]`` and ``Â`` itself."""

    __slots__ = ("kl", "grad", "A_hat")

    def __init__(self, kl: torch.Tensor, grad: torch.Tensor, A_hat: torch.Tensor) -> None:
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
    if block == "u":
        Q0, gX, X0 = W @ W.T, mu * (W @ pt.grad.T), Ut  # X0 = Uᵀ [k, n]
        P0 = W @ X.T - gX
    else:
        Q0, gX, X0 = Ut @ Ut.T, mu * (Ut @ pt.grad), W  # X0 = W [k, C]
        P0 = Ut @ X - gX
    eye = torch.eye(Q0.shape[0], dtype=Q0.dtype, device=Q0.device)
    f0 = mu * float(pt.kl.sum())
    g64 = gX.to(torch.float64)
    for _ in range(_MAX_BACKTRACK):
        Xn = hals(P0 + L * X0, Q0 + L * eye, X0, sweeps, floor=floor, delta=_DELTA)
        D = (Xn - X0).to(torch.float64)
        d2 = float(D.square().sum())
        if d2 == 0.0:
            return X0, pt, L, False
        A_new = Xn.T @ W if block == "u" else Ut.T @ Xn
        kl_new, g_new = term.value_and_grad(A_new)
        f_new = mu * float(kl_new.sum())
        lin = float((g64 * D).sum())
        excess = f_new - f0 - lin  # ≤ (L/2)‖D‖² is the majorisation we need
        if excess <= 0.5 * L * d2 + _SLACK * (abs(f0) + abs(lin) + 1e-30):
            return Xn, _Point(kl_new, g_new, A_new), L, True
        # The secant curvature along D, doubled: the next trial usually passes at once.
        L = max(2.0 * L, 4.0 * excess / d2)
    return X0, pt, L, False


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
        ``λ·KL̄`` against ``MSE``: on EfficientNet-Lite0's last layer (MSE ≈ 0.38, KL̄ ≈ 1 at the NMF
        solution, k = 10) ``λ ≤ 1e-3`` changed almost nothing and ``λ ≈ 0.1–1`` paid off (measured).
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
    encode_kl_steps : int
        ``U`` steps taken on the full objective (``W`` frozen) after the NNLS encode, when a head is
        attached and ``λ > 0``; 0 gives the plain NNLS codes.
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
    uses_head = True
    #: ``fit`` fails without a head (EDDP only uses one when it is there).
    needs_head: ClassVar[bool] = True
    sweep_param = "kl_weight"
    quick_params: ClassVar[Mapping[str, Any]] = {"max_iter": 20, "encode_kl_steps": 2}

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
        encode_kl_steps: int = 10,
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
        self.encode_kl_steps = encode_kl_steps
        self.progress = progress

    # -- parameters ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments except the head (a callable, not saved: re-attach it after loading)."""
        p = super().get_params()
        p.pop("head", None)
        return p

    def _check_params(self) -> None:
        def number(name: str, v: Any, lo: float, strict: bool = False) -> None:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < lo or (strict and v == lo):
                rel = ">" if strict else "≥"
                raise ParameterError(f"{name} must be a finite number {rel} {lo}, got {v!r}")

        def integer(name: str, v: Any, lo: int) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ParameterError(f"{name} must be an integer ≥ {lo}, got {v!r}")

        number("kl_weight", self.kl_weight, 0.0)
        number("tol", self.tol, 0.0)
        number("lr", self.lr, 0.0, strict=True)
        if self.solver not in _SOLVERS:
            raise ParameterError(f"solver must be one of {', '.join(_SOLVERS)}; got {self.solver!r}")
        if self.max_iter is not None:
            integer("max_iter", self.max_iter, 1)
        if self.max_time is not None:
            number("max_time", self.max_time, 0.0, strict=True)
        integer("batch_images", self.batch_images, 1)
        integer("encode_kl_steps", self.encode_kl_steps, 0)
        integer("seed", self.seed, -(2**63))

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, A: torch.Tensor, layer_name: str | None = None) -> FACE:
        """Fit the concept bank on non-negative activations with their image structure.

        Parameters
        ----------
        A : Tensor ``[N, *S, C]`` (e.g. ``[N, h, w, C]``)
            Non-negative activations; the first axis indexes images (the head's batch axis).
        layer_name : str, optional
            Name of the layer, for error messages.

        Returns
        -------
        FACE
            ``self``, with ``components_``, ``history_``, ``objective_``, ``n_iter_``.
        """
        self._fit(A, layer_name)
        return self

    def fit_encode(self, A: torch.Tensor, layer_name: str | None = None) -> torch.Tensor:
        """Fit on ``A [N, *S, C]`` and return the fitted coefficients ``U [N, *S, k]`` (≥ 0)."""
        Ut, lead = self._fit(A, layer_name)
        return Ut.T.reshape(*lead, Ut.shape[0])

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
            warnings.warn(
                "FACE was fitted on all-zero activations: the concept bank is all zeros; check the layer",
                RuntimeWarning,
                stacklevel=3,
            )
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

        Ut, W = _normalise(Ut, W)
        self.components_ = W
        A_hat = Ut.T @ W
        f64 = torch.float64
        mse = float(torch.linalg.vector_norm(X - A_hat, dtype=f64)) ** 2 / X.numel()
        kl = float(term.value(A_hat).mean())
        self.objective_ = {"mse": mse, "kl": kl, "total": mse + float(self.kl_weight) * kl}
        self.reconstruction_err_ = math.sqrt(mse * X.numel()) / float(torch.linalg.vector_norm(X, dtype=f64))
        self.fit_time_ = time.perf_counter() - t0
        return Ut, lead

    def _record(self, it: int, X: torch.Tensor, A_hat: torch.Tensor, kl: torch.Tensor, t0: float) -> float:
        # float64 accumulation: a float32 norm over millions of entries was off by 0.15 % (measured).
        mse = float(torch.linalg.vector_norm(X - A_hat, dtype=torch.float64)) ** 2 / X.numel()
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
        sweeps_u, sweeps_w = nmf._sweep_budget(n, C, k)
        floor_u, floor_w = _FLOOR * float(X.max()), _FLOOR
        Ut, W = _normalise(Ut.clamp_min(floor_u), W.clamp_min(floor_w))

        A_hat = Ut.T @ W
        if mu > 0:
            pt = _Point(*term.value_and_grad(A_hat), A_hat)
        else:  # λ = 0: plain HALS, the head is only needed for the reported KL
            pt = _Point(term.value(A_hat), X[:0], A_hat)
        prev = self._record(0, X, A_hat, pt.kl, t0)
        max_iter = 200 if self.max_iter is None else self.max_iter
        Lu = Lw = 0.0
        it = 0
        bar = self._bar(max_iter)
        try:
            for it in range(1, max_iter + 1):
                if mu > 0:
                    Ut, pt, Lu, _ = _prox_step(X, Ut, W, "u", term, mu, pt, Lu, sweeps_u, floor_u)
                    W, pt, Lw, _ = _prox_step(X, Ut, W, "w", term, mu, pt, Lw, sweeps_w, floor_w)
                    # Let L shrink again: the curvature far from the start is usually smaller.
                    Lu, Lw = 0.5 * Lu, 0.5 * Lw
                else:
                    Ut = hals(W @ X.T, W @ W.T, Ut, sweeps_u, floor=floor_u, delta=_DELTA)
                    W = hals(Ut @ X, Ut @ Ut.T, W, sweeps_w, floor=floor_w, delta=_DELTA)
                    A_hat = Ut.T @ W
                    pt = _Point(term.value(A_hat), pt.grad, A_hat)
                Ut, W = _normalise(Ut, W)
                total = self._record(it, X, pt.A_hat, pt.kl, t0)
                bar.update(1)
                bar.set_postfix(objective=f"{total:.6g}", refresh=False)
                if prev - total <= self.tol * abs(prev):
                    break
                prev = total
                if deadline is not None and time.perf_counter() >= deadline:
                    break
        finally:
            bar.close()
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
        bar = self._bar(max_iter)
        try:
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
        finally:
            bar.close()
        self.n_iter_ = it
        return U.T.contiguous(), W

    # -- encoding -----------------------------------------------------------------------------
    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        """Non-negative least-squares codes ``U [n, k]`` with the bank frozen (no KL: rows have no images)."""
        return nnls_codes(A, self.components_.to(A.device))

    def encode(self, A: torch.Tensor) -> torch.Tensor:
        """Coefficients ``U [N, *S, k] ≥ 0`` of ``A [N, *S, C]`` with the bank frozen.

        The NNLS codes of NMF, followed, when a head is attached, ``kl_weight > 0`` and
        ``encode_kl_steps > 0``, by that many monotone forward–backward steps on the full FACE
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
        A_hat = Ut.T @ W
        pt, L = _Point(*term.value_and_grad(A_hat), A_hat), 0.0
        sweeps = max(NMF(n_concepts=W.shape[0])._sweep_budget(n, C, W.shape[0])[0], 1)
        for _ in range(self.encode_kl_steps):
            Ut, pt, L, ok = _prox_step(X, Ut, W, "u", term, mu, pt, L, sweeps, 0.0)
            if not ok:
                break
            L *= 0.5
        return Ut.T.reshape(*lead, Ut.shape[0])
