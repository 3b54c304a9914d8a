"""Encoding–decoding direction pairs (EDDP; Doumanoglou et al., arXiv 2509.23926), in torch.

A feature vector is modelled as ``x = S α + D β`` (``S``: encoding directions, ``D``: distractors). A
concept's *decoding direction* is a filter ``w_i`` whose detector ``y_i = σ(w_iᵀx − b_i)`` says whether
the concept is present; its *encoding direction* is the signal vector ``s_i`` along which the concept
moves the activations. Nothing here reconstructs ``x``: the filters come from a soft directional
clustering of the activations, the signals from a regression of ``x`` on each filter's output.

Notation (rows; any ``[..., C]`` input is flattened to rows, see :mod:`conceptlens.decompose.base`):

============  ==========  ===========================================================================
``x``         ``[n, C]``  activations
``μ``         ``[C]``     per-channel mean of the fit rows
``z``         ``[n, r]``  the learning space ``z = (x − μ) P``: channels standardised, then decorrelated
                          and scaled by ``(λ + ε)^{-1/2}`` (shrunk whitening, ``ε = whiten``; ``λ``:
                          eigenvalues of the channels' correlation matrix; ``r`` ≤ C directions that
                          carry variance); back to activations on the data's span: ``x − μ = z Q``
``u_i``       ``[r]``     unit filter direction in ``z``
``M_i, t_i``  scalars     margin and threshold there: ``y_i = σ((u_iᵀz − t_i) / M_i)``
``w_i, b_i``  ``[C]``, ·  the same detector in activation space, ``decoding_directions_`` / ``biases_``:
                          ``w_i = P u_i / M_i``, ``b_i = t_i / M_i + w_iᵀμ``, so ``y_i = σ(w_iᵀx − b_i)``
``a_i``       ``[n]``     the detector's logit ``w_iᵀx − b_i``
``y``         ``[n, k]``  detector responses ``σ(a)``; ``q = y / ‖y‖₁`` (per row)
``s_i``       ``[C]``     signal vector (encoding direction, ``encoding_directions_`` = ``components_``)
============  ==========  ===========================================================================

Why a whitened space: every unit direction of ``z`` has (about) unit variance, so the max-margin loss
compares gaps *relative to the spread* along each direction, and the directional clustering is not
dominated by high-variance distractors: on the paper's synthetic data, spherical k-means on merely
standardised rows splits along the distractors on most seeds, and after whitening it recovers the
planted clusters. The paper learns its filters "in a standardised space".

Losses on the detectors (entropies in bits, averages over the rows of a mini-batch, ``I = k``):

* sparsity ``E[H(q)]`` — each row should belong to few concepts;
* maximum activation ``−E[qᵀ log₂ y]`` — the concepts a row belongs to should fire with confidence;
* max margin ``(1/I) Σ 1/M_i`` (weight ``margin_weight``) — a gap around each boundary, as in an SVM;
* inactive classifier ``E_i[(1/ν) ReLU(ν − E_rows[y_i^γ])]``, ``ν = τ/I`` — no dead detectors.

Signal vectors start from the pattern estimator ``s_i = cov[x, a_i] / var(a_i)`` over the positives
(``y_i > 0.5``; ``signal="weighted"`` weights every row by ``y_i`` instead). That estimator is the
minimiser of the regression ``E[‖(x − E x) − s_i (a_i − E a_i)‖²]``, whose excess loss is
``var(a_i)·‖s_i − s_i*‖²``; the anchor we use is its scale-free form ``‖s_i − s_i*‖² / ‖s_i*‖²``
(mean over concepts, weight ``signal_weight``), with ``s_i*`` recomputed from moving averages of
mini-batch statistics as the filters move. During the joint phase the signals minimise that anchor plus
the filter–signal orthogonality loss ``√(E_{i≠j}[(ūᵢᵀ s̄ⱼ)²])`` (unit vectors, in ``z``; weight
``orth_weight``). The anchor is our choice of the "keep S sensible" term: the orthogonality loss alone
is minimised by any signals orthogonal to the other filters, however unrelated to the data; a global
reconstruction ``x ≈ μ + Σ y_i s_i`` would instead pull every ``s_i`` towards the mean activation of
its positives, which contains the other concepts and the distractors. After the last step the signals
are re-solved once more (``polish_iter`` Adam steps on ``S`` alone, no data access) against exact
full-data statistics of the final filters.

Uncertainty Region Alignment (URA, only with a ``head``): every row is moved towards all detectors'
boundaries, ``x' = x − κ·dx`` with ``dx = S (WᵀS)⁺ (Wᵀx − b)`` (``(Wᵀ)⁺(Wᵀx − b)`` in the first phase,
before ``S`` exists; both computed in ``z`` and mapped back with ``Q``), ``κ ~ U[0.5, 0.9]`` per row,
and the entropy (bits) of ``softmax(h(x'))`` is maximised with weight ``ura_weight``: the classifier
should be uncertain where the concepts are uncertain, which aligns the detectors with what the
classifier uses. ``h`` takes activations shaped like the input with a smaller leading dimension
(``[B, h, w, C]`` for ``[N, h, w, C]`` input), so URA mini-batches are whole images. Its gradient
reaches the detectors only: ``S`` is held constant inside the URA term (our choice), so that the
signals remain estimates from the data and an edit subtracts what the data say the concept adds; the
head's parameters are never written to.

Schedule (after the paper's, simplified): (0) seeded spherical k-means (best of ``n_init``) on the
unit-normalised rows of ``z`` gives the initial ``u_i``, thresholds half-way between the mean
projections of members and non-members, and margins that put the average member at logit +2 (our
choice; the paper does not say); (1) ``max_iter/2`` Adam steps on the detectors (+ URA); (2) signals
from the covariance formula over all rows; (3) ``max_iter/2`` joint steps on detectors and signals
(+ URA); (4) the signal polish. The paper's later extra sparsity terms (excessively-active penalty,
per-pixel bound) and its orthogonal-filter constraint of phase 1 are not implemented.

``encode(A)`` returns the detector responses ``y [..., k]`` (presence probabilities in (0, 1)).
``decode(Y) = μ + (Y − ȳ) @ S`` (the signal model: the fit data's mean ``μ`` plus each response's deviation
from its mean ``ȳ_i`` along its signal vector; stored as ``Y @ S + decode_offset_``), where each stored signal
vector is scaled so that ``w_iᵀ s_i = m_i``, the mean logit gap between the concept's positives and
negatives: for a row where the detector fires (``y ≈ 1``) ``y_i s_i`` is the typical activation change the
concept accounts for, and removing it takes a typical positive to the level of a typical negative. The
offset (like PCA's mean) goes into the bias of the local explanations. The pure functions
:func:`remove_concepts` and :func:`unlearn` implement
the paper's edit ``x' = ReLU(x − σ(w_iᵀx − b_i) · k · s_i)``.

The building blocks (whitening, clustering, losses, signal statistics) live in
:mod:`~conceptlens.decompose._eddp_losses`, the edits in :mod:`~conceptlens.decompose._eddp_edit`; their
public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from conceptlens._check import check_float, check_int
from conceptlens.decompose._eddp_edit import UnlearnedHead, remove_concepts, unlearn
from conceptlens.decompose._eddp_losses import (
    CHUNK,
    EPS,
    SignalStats,
    detector_losses,
    entropy_bits,
    orthogonality_loss,
    spherical_kmeans,
    whitening,
)
from conceptlens.decompose.base import Decomposition, as_rows, check_channels, register
from conceptlens.errors import ActivationError, HeadError, NotFittedError, ParameterError
from conceptlens.progress import progress_bar

__all__ = [
    "EDDP",
    "spherical_kmeans",
    "detector_losses",
    "orthogonality_loss",
    "remove_concepts",
    "unlearn",
    "UnlearnedHead",
]

_SIGNALS = ("positives", "weighted")


# ------------------------------------------------------------------------------------------------
# the decomposition
# ------------------------------------------------------------------------------------------------
@register("eddp")
class EDDP(Decomposition):
    """Encoding–decoding direction pairs: concept detectors (filters) and their signal vectors.

    Parameters
    ----------
    n_concepts : int
        Number of detectors ``k`` (the paper's ``I``).
    head : callable, optional
        The classifier's head ``h`` (activations with the input's layout → logits ``[B, K]``,
        differentiable); enables Uncertainty Region Alignment. Can also be attached with
        :meth:`set_head` (the explainer does so).
    seed : int
        Seed of the clustering initialisation, the mini-batches and the URA step sizes.
    gamma : float
        ``γ`` of the inactive-classifier loss.
    tau : float
        ``τ``: a detector whose mean ``y^γ`` falls below ``τ / k`` is pushed to fire more.
    margin_weight : float
        Weight of the max-margin loss (the other detector losses have weight 1).
    max_iter : int
        Adam steps in total, half on the detectors alone and half jointly with the signals.
    lr : float
        Adam learning rate (all parameters live in the whitened space ``z``).
    batch_size : int
        Rows per mini-batch.
    signal : {"positives", "weighted"}
        Rows used by the signal estimator: the detector's positives (``y_i > 0.5``, the paper's first
        version) or every row weighted by ``y_i`` (its probabilistic view).
    ura_weight : float
        Weight of the URA entropy term (used only with a head).
    ura_batch_size : int
        Leading-dimension items (images) per URA mini-batch; ``h`` runs on one such batch per step.
    signal_weight : float
        Weight of the signal regression term in the joint phase.
    orth_weight : float
        Weight of the filter–signal orthogonality term in the joint phase.
    whiten : float
        Shrinkage ``ε`` of the whitening that defines the space everything is learned in: channels are
        standardised, then decorrelated and scaled by ``(λ + ε)^{-1/2}`` (``λ``: eigenvalues of the
        channels' correlation matrix, mean 1). ``0`` is full whitening; large values approach plain
        standardisation.
    n_init : int
        Spherical k-means restarts for the initialisation; the most compact clustering is kept.
    init_rows : int
        Rows (drawn without replacement, seeded) for the initialisation and the whitening.
    stats_decay : float
        Decay of the moving averages of the signal statistics during the joint phase.
    polish_iter : int
        Adam steps of the final signal solve against exact full-data statistics (0: skip).
    progress : bool
        Show a progress bar over the Adam steps.

    Attributes
    ----------
    decoding_directions_ : Tensor ``[k, C]``
        Filters ``w_i`` (they include the scale ``1/M``): ``y = σ(A @ Wᵀ − b)``.
    biases_ : Tensor ``[k]``
        ``b_i``.
    margins_ : Tensor ``[k]``
        Geometric margins in activation space, ``1 / ‖w_i‖``.
    encoding_directions_ : Tensor ``[k, C]``
        Signal vectors ``s_i``, scaled so that ``w_iᵀ s_i`` is the mean logit gap between positives
        and negatives (see the module docstring). ``components_`` is the same tensor.
    input_min_ : Tensor ``[]``
        Smallest activation seen at fit (``≥ 0`` → :func:`remove_concepts` applies its ReLU by default).
    loss_history_ : list[dict[str, float]]
        Loss terms every 50 steps (diagnostics; not saved).

    Examples
    --------
    >>> d = EDDP(n_concepts=10, seed=0).fit(A)        # A [N, h, w, C]
    >>> Y = d.encode(A)                               # [N, h, w, 10] detector responses
    >>> A2 = remove_concepts(A, d, [3])               # concept 3 edited out
    """

    label = "EDDP"
    uses_head = True  # for URA, when a head is attached
    needs_head: ClassVar[bool] = False
    state_fields = ("decoding_directions_", "biases_", "margins_", "encoding_directions_", "input_min_",
                    "decode_offset_")
    edit_rule = "own"  # the paper's edit: encoding directions weighted by the detectors (remove_concepts)
    report_sections = ("edits",)
    quick_params: ClassVar[Mapping[str, Any]] = {"max_iter": 60, "polish_iter": 10, "n_init": 1,
                                                 "init_rows": 4000}
    #: The demo's budget: 300 steps without the alignment term (3.5× cheaper).
    demo_params: ClassVar[Mapping[str, Any]] = {"max_iter": 300, "ura_weight": 0.0}

    def __init__(
        self,
        n_concepts: int = 10,
        head: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        *,
        gamma: float = 1.1,
        tau: float = 0.5,
        margin_weight: float = 0.1,
        max_iter: int = 1000,
        lr: float = 0.02,
        batch_size: int = 1024,
        signal: str = "positives",
        ura_weight: float = 0.25,
        ura_batch_size: int = 8,
        signal_weight: float = 1.0,
        orth_weight: float = 1.0,
        whiten: float = 0.1,
        n_init: int = 3,
        init_rows: int = 20000,
        stats_decay: float = 0.98,
        polish_iter: int = 200,
        progress: bool = False,
    ) -> None:
        super().__init__(n_concepts=n_concepts, seed=seed)
        self.head = head
        self.gamma = gamma
        self.tau = tau
        self.margin_weight = margin_weight
        self.max_iter = max_iter
        self.lr = lr
        self.batch_size = batch_size
        self.signal = signal
        self.ura_weight = ura_weight
        self.ura_batch_size = ura_batch_size
        self.signal_weight = signal_weight
        self.orth_weight = orth_weight
        self.whiten = whiten
        self.n_init = n_init
        self.init_rows = init_rows
        self.stats_decay = stats_decay
        self.polish_iter = polish_iter
        self.progress = progress

    def edit_head(self, head: Callable[[torch.Tensor], torch.Tensor],
                  removed: Mapping[int, float]) -> nn.Module:
        """The paper's edit as a head: :class:`UnlearnedHead` with ``removed`` (concept → fraction)."""
        return UnlearnedHead(head, self, [], dict(removed))

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        for name in ("max_iter", "batch_size", "ura_batch_size", "init_rows", "n_init"):
            check_int(name, getattr(self, name), 1)
        if self.max_iter < 2:
            raise ParameterError(f"max_iter must be ≥ 2 (two phases), got {self.max_iter}")
        for name in ("gamma", "tau", "lr"):
            check_float(name, getattr(self, name), 0.0, strict_min=True)
        for name in ("margin_weight", "ura_weight", "signal_weight", "orth_weight", "whiten"):
            check_float(name, getattr(self, name), 0.0)
        check_int("polish_iter", self.polish_iter, 0)
        d = self.stats_decay
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ParameterError(f"stats_decay must be in [0, 1), got {d!r}")
        if self.signal not in _SIGNALS:
            raise ParameterError(f"signal must be one of {_SIGNALS}, got {self.signal!r}")
        check_int("seed", self.seed)
        if self.head is not None and not callable(self.head):
            raise ParameterError(
                f"head must be callable (activations → logits), got {type(self.head).__name__}"
            )

    # ------------------------------------------------------------------ fit
    def fit(self, A: torch.Tensor, layer_name: str | None = None) -> EDDP:
        """Learn ``k`` detectors and their signal vectors on ``A``.

        Parameters
        ----------
        A : Tensor ``[n, C]`` or ``[N, ..., C]``
            Activations. With a head, ``head(A[:B])`` must give logits ``[B, K]``.
        layer_name : str, optional
            Name of the layer, for error messages.

        Returns
        -------
        EDDP
            ``self``, with ``decoding_directions_``, ``biases_``, ``margins_``,
            ``encoding_directions_`` (= ``components_``) and ``input_min_``.
        """
        self._check_params()
        A = A.detach() if isinstance(A, torch.Tensor) else A
        rows = self._validate(A)
        n, C = rows.shape
        k = self.n_concepts
        where = f" of layer {layer_name!r}" if layer_name else ""
        if n < max(k, 2):
            raise ActivationError(
                f"EDDP needs at least max(n_concepts, 2) = {max(k, 2)} activation rows{where}, got {n}; "
                "use more images or fewer concepts"
            )
        dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        dev = rows.device
        gen = torch.Generator(device=dev).manual_seed(int(self.seed))

        # (0) the standardised, whitened space and the directional clustering initialisation
        m = min(n, self.init_rows)
        sub = torch.randperm(n, generator=gen, device=dev)[:m] if m < n else torch.arange(n, device=dev)
        mu, P, Q = whitening(rows, rows[sub], self.whiten, dtype)
        r = P.shape[1]
        if r < k:
            raise ActivationError(
                f"the activations{where} span only {r} independent directions, fewer than n_concepts={k}; "
                "use fewer concepts or more varied images"
            )
        Z0 = (rows[sub].to(dtype) - mu) @ P
        best: tuple[float, torch.Tensor, torch.Tensor] | None = None
        Zn = F.normalize(Z0, dim=1)
        for _ in range(self.n_init):
            cent, labels = spherical_kmeans(Zn, k, gen)
            obj = float((Zn @ cent.T).max(1).values.sum())
            if best is None or obj > best[0]:
                best = (obj, cent, labels)
        _, cent, labels = best  # type: ignore[misc]
        proj = Z0 @ cent.T  # [m, k]
        member = F.one_hot(labels, k).to(dtype)
        m_in = (proj * member).sum(0) / member.sum(0).clamp_min(1.0)
        m_out = (proj * (1 - member)).sum(0) / (1 - member).sum(0).clamp_min(1.0)
        gap = (m_in - m_out).clamp_min(1e-3)
        v = cent.clone().requires_grad_(True)
        t = ((m_in + m_out) / 2).clone().requires_grad_(True)
        # the typical member starts at logit +2 (y ≈ 0.88): confident but not saturated
        logM = torch.log(gap / 4).clone().requires_grad_(True)
        del Z0, Zn, proj, member

        leading = A.shape[0] if A.ndim >= 2 else 1
        use_ura = self.head is not None and self.ura_weight > 0 and A.ndim >= 2
        opt = torch.optim.Adam([v, t, logM], lr=self.lr)
        half = self.max_iter // 2
        history: list[dict[str, float]] = []
        S: torch.Tensor | None = None
        stats: SignalStats | None = None
        for step in progress_bar(range(self.max_iter), desc=f"EDDP k={k}", enable=bool(self.progress)):
            u = F.normalize(v, dim=1)
            M = logM.exp()
            Wz = u / M[:, None]  # filters in the whitened space [k, r]
            Wx = Wz @ P.T  # the same filters in activation space [k, C]
            bx = t / M + Wx @ mu
            if step == half:
                # (2) signal vectors from the covariance formula over all rows
                with torch.no_grad():
                    stats = self._full_stats(rows, Wx.detach(), bx.detach(), mu, dtype)
                S = stats.pattern(P).clone().requires_grad_(True)
                opt.add_param_group({"params": [S]})
            idx = torch.randint(n, (self.batch_size,), generator=gen, device=dev)
            xb = rows[idx].to(dtype)
            a = xb @ Wx.T - bx
            L = detector_losses(a, M, gamma=self.gamma, tau=self.tau)
            loss = L["sparsity"] + L["max_activation"] + self.margin_weight * L["max_margin"] + L["inactive"]
            terms = {key: float(val.detach()) for key, val in L.items()}
            if S is not None and stats is not None:
                with torch.no_grad():
                    ad = a.detach()
                    sums = SignalStats.batch(xb - mu, ad, self._weights(ad))
                    stats.update(sums, xb.shape[0], self.stats_decay)
                    target = stats.pattern(P)
                reg = ((S - target).square().sum(1) / target.square().sum(1).clamp_min(EPS)).mean()
                orth = orthogonality_loss(u, S)
                loss = loss + self.signal_weight * reg + self.orth_weight * orth
                terms.update(signal_regression=float(reg.detach()), orthogonality=float(orth.detach()))
            if use_ura:
                ent = self._ura_entropy(A, leading, Wx, bx, Q, Wz, S, gen, dtype)
                loss = loss - self.ura_weight * ent
                terms["ura_entropy"] = float(ent.detach())
            params = [p for g in opt.param_groups for p in g["params"]]
            # autograd.grad (not backward) so that the head's parameters never accumulate .grad
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g if g is not None else torch.zeros_like(p)
            opt.step()
            if step % 50 == 0 or step == self.max_iter - 1:
                history.append({"step": float(step), "loss": float(loss.detach()), **terms})
        if S is None:
            raise ParameterError(f"max_iter must be ≥ 2 (two phases), got {self.max_iter}")
        with torch.no_grad():
            u = F.normalize(v, dim=1)
            M = logM.exp()
            Wx = (u / M[:, None]) @ P.T
            bx = t / M + Wx @ mu
            stats = self._full_stats(rows, Wx, bx, mu, dtype)
            target = stats.pattern(P)
        # (4) the signals' objective for the final filters, from exact full-data statistics: cheap
        # (no data access), and it removes the lag of the moving averages behind the moving filters
        S = S.detach().clone().requires_grad_(True)
        opt_s = torch.optim.Adam([S], lr=self.lr)
        for _ in range(self.polish_iter):
            reg = ((S - target).square().sum(1) / target.square().sum(1).clamp_min(EPS)).mean()
            loss = self.signal_weight * reg + self.orth_weight * orthogonality_loss(u, S)
            (g,) = torch.autograd.grad(loss, [S])
            S.grad = g
            opt_s.step()
        with torch.no_grad():
            W = Wx.to(rows.dtype)
            b = bx.to(rows.dtype)
            # the gap between each detector's positives and negatives sets the signals' scale
            gap_final = self._logit_gap(rows, W, b).to(dtype)
            S_x = S.detach() @ Q
            # exactly w_iᵀ s_i = m_i, so that removing y_i s_i lowers the logit by y_i m_i (the raw
            # signals only approximately satisfy w_iᵀ s_i = 1 once the orthogonality term has acted)
            own = (Wx * S_x).sum(1)
            S_x = S_x * torch.where(own > EPS, gap_final / own.clamp_min(EPS), gap_final)[:, None]
            self.decoding_directions_ = W.contiguous()
            self.biases_ = b.contiguous()
            self.margins_ = (1.0 / W.norm(dim=1)).contiguous()
            self.encoding_directions_ = S_x.to(rows.dtype).contiguous()
            self.components_ = self.encoding_directions_
            self.input_min_ = rows.min().to(rows.dtype).reshape(())
            # decode = the signal model x ≈ μ + Σ_i (y_i − ȳ_i) s_i: the mean carries what no concept
            # explains, so that h(decode(encode(A))) is comparable with the other methods' reconstructions
            ybar = torch.zeros(W.shape[0], dtype=torch.float64, device=rows.device)
            for i in range(0, rows.shape[0], CHUNK):
                ybar += self._encode_rows(rows[i : i + CHUNK]).sum(0, dtype=torch.float64)
            ybar = (ybar / rows.shape[0]).to(rows.dtype)
            self.decode_offset_ = (mu.to(rows.dtype) - ybar @ self.encoding_directions_).contiguous()
        self.loss_history_ = history
        return self

    # ------------------------------------------------------------------ fit helpers
    def _weights(self, a: torch.Tensor) -> torch.Tensor:
        """Signal-estimator weights ``[B, k]`` from detector logits: positives mask or ``y``."""
        return (a > 0).to(a.dtype) if self.signal == "positives" else torch.sigmoid(a)

    def _full_stats(
        self, rows: torch.Tensor, Wx: torch.Tensor, bx: torch.Tensor, mu: torch.Tensor, dtype: torch.dtype
    ) -> SignalStats:
        """Signal statistics over every row (chunked); a concept with no positive falls back to ``y``."""
        acc: list[torch.Tensor] = []
        acc_y: list[torch.Tensor] = []
        for i in range(0, rows.shape[0], CHUNK):
            xc = rows[i : i + CHUNK].to(dtype) - mu
            a = xc @ Wx.T - (bx - Wx @ mu)
            s = SignalStats.batch(xc, a, self._weights(a))
            sy = SignalStats.batch(xc, a, torch.sigmoid(a))
            acc = list(s) if not acc else [x + y for x, y in zip(acc, s, strict=True)]
            acc_y = list(sy) if not acc_y else [x + y for x, y in zip(acc_y, sy, strict=True)]
        # a detector without positives (a rare concept) gets the weighted estimate
        empty = acc[0] < 0.5
        if bool(empty.any()):
            for j, (x, y) in enumerate(zip(acc, acc_y, strict=True)):
                acc[j] = torch.where(empty if x.ndim == 1 else empty[:, None], y, x)
        st = SignalStats()
        st.set(acc, rows.shape[0])
        return st

    def _logit_gap(self, rows: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``m_i = E_pos[a_i] − E_neg[a_i]`` over all rows (weights per ``signal``), ``[k]``."""
        dt = torch.float64
        sums = torch.zeros(8, W.shape[0], dtype=dt, device=rows.device)
        for i in range(0, rows.shape[0], CHUNK):
            a = (rows[i : i + CHUNK] @ W.T - b).to(dt)
            om, y = self._weights(a), torch.sigmoid(a)
            sums += torch.stack([(om * a).sum(0), ((1 - om) * a).sum(0), om.sum(0), (1 - om).sum(0),
                                 (y * a).sum(0), ((1 - y) * a).sum(0), y.sum(0), (1 - y).sum(0)])
        sp, sn, cp, cn, spy, sny, cpy, cny = sums
        ok = (cp > 0.5) & (cn > 0.5)
        gap = torch.where(ok, sp / cp.clamp_min(EPS) - sn / cn.clamp_min(EPS),
                          spy / cpy.clamp_min(EPS) - sny / cny.clamp_min(EPS))
        return gap.clamp_min(EPS).to(W.dtype)

    def _ura_entropy(
        self,
        A: torch.Tensor,
        leading: int,
        Wx: torch.Tensor,
        bx: torch.Tensor,
        Q: torch.Tensor,
        Wz: torch.Tensor,
        S: torch.Tensor | None,
        gen: torch.Generator,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Entropy (bits) of ``h(x')`` on a mini-batch of whole items moved towards the boundaries."""
        B = min(self.ura_batch_size, leading)
        items = torch.randint(leading, (B,), generator=gen, device=A.device)
        Xb = A[items].to(dtype)
        x = Xb.reshape(-1, Xb.shape[-1])
        # products ordered so that only [k, C] matrices meet the R rows (never an [R, C] × [C, C])
        r = x @ Wx.T - bx  # [R, k] detector logits
        if S is None:
            step = torch.linalg.pinv(Wz).T @ Q  # (Wᵀ)⁺: the shortest move onto all boundaries
        else:
            # S enters as a constant: URA aligns the detectors with the classifier, while the signals
            # stay estimates from the data (what an edit subtracts must be what the concept adds)
            Sd = S.detach()
            step = torch.linalg.pinv(Wz @ Sd.T).T @ (Sd @ Q)  # S (WᵀS)⁺: the move along the signals
        kappa = 0.5 + 0.4 * torch.rand(x.shape[0], 1, generator=gen, device=A.device, dtype=dtype)
        x_moved = x - kappa * (r @ step)
        head = self.head
        try:
            logits = head(x_moved.reshape(Xb.shape).to(A.dtype))  # type: ignore[misc]
        except Exception as exc:  # a head that cannot take the batch is a user error worth naming
            raise HeadError(
                f"the head given to EDDP failed on activations of shape {list(Xb.shape)} ({exc}); it must "
                "map [B, ...] activations with the fit input's layout to logits [B, K]"
            ) from exc
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.requires_grad:
            raise HeadError(
                "the head given to EDDP must return differentiable logits [B, K]; got "
                + (f"shape {list(logits.shape)}, requires_grad={logits.requires_grad}"
                   if isinstance(logits, torch.Tensor) else type(logits).__name__)
            )
        return entropy_bits(logits.to(dtype))

    # ------------------------------------------------------------------ encode / decode
    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        """Detector responses ``y = σ(A Wᵀ − b)`` ``[n, k]``."""
        W = self.decoding_directions_.to(A.device)
        return torch.sigmoid(A @ W.T - self.biases_.to(A.device))

    def _decode_rows(self, U: torch.Tensor) -> torch.Tensor:
        """``Â = μ + (y − ȳ) S = y S + offset`` ``[n, C]`` from detector responses ``U = y [n, k]``."""
        S = self.encoding_directions_.to(U.device, U.dtype)
        off = getattr(self, "decode_offset_", None)  # absent in files saved before it existed
        out = U @ S
        return out if off is None else out + off.to(U.device, U.dtype)

    def logits(self, A: torch.Tensor) -> torch.Tensor:
        """Detector logits ``w_iᵀx − b_i`` ``[..., k]`` of activations ``[..., C]``."""
        self._check_fitted("logits")
        rows, lead = as_rows(A)
        check_channels(rows, self.decoding_directions_.shape[1], "EDDP")
        W = self.decoding_directions_.to(rows.device, rows.dtype)
        a = rows @ W.T - self.biases_.to(rows.device, rows.dtype)
        return a.reshape(*lead, a.shape[-1])

    # ------------------------------------------------------------------ saving
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors (safetensors-ready; ``components_`` is left out: it aliases the signals)."""
        self._check_fitted("state_tensors")
        # two names for one storage cannot be written by safetensors (it refuses shared tensors)
        return {
            "decoding_directions_": self.decoding_directions_,
            "biases_": self.biases_,
            "margins_": self.margins_,
            "encoding_directions_": self.encoding_directions_,
            "input_min_": self.input_min_,
            "decode_offset_": self.decode_offset_,
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the tensors of :meth:`state_tensors`; ``components_`` aliases the signals."""
        missing = {"decoding_directions_", "biases_", "encoding_directions_"} - set(tensors)
        if missing:
            raise NotFittedError(f"EDDP state lacks {sorted(missing)}; it was not saved from a fitted EDDP")
        super().load_state_tensors(tensors)
        self.components_ = self.encoding_directions_
