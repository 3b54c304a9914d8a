"""Principal component analysis as a concept extractor.

Notation (as in :mod:`conceptlens.decompose.base`):

==========  ==========  =============================================================
``A``       ``[n, C]``  activations (any sign)
``mean_``   ``[C]``     the mean row of the training activations
``W``       ``[k, C]``  ``components_``: orthonormal rows, the top-``k`` principal axes
``U``       ``[n, k]``  scores ``(A − mean_) Wᵀ``; ``A ≈ U W + mean_``
==========  ==========  =============================================================

PCA gives the best rank-``k`` fidelity of any linear method, but its concepts are signed and
overlapping, so it is the fidelity reference rather than an interpretable bank.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from conceptlens._threads import small_ops
from conceptlens.decompose.base import Decomposition, check_channels, register
from conceptlens.errors import ActivationError

__all__ = ["PCA"]

#: Rows per batch read from a store.
STORE_ROWS = 8192


def _fix_signs(W: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its largest-magnitude entry is positive (a deterministic convention)."""
    idx = W.abs().argmax(dim=1, keepdim=True)
    s = torch.sign(W.gather(1, idx))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return W * s


@register("pca")
class PCA(Decomposition):
    """Principal component analysis: ``A ≈ U W + mean_`` with orthonormal ``W``.

    Parameters
    ----------
    n_concepts : int
        Number of components ``k`` (``1 ≤ k ≤ C``).
    seed : int
        Unused (the method is deterministic); kept for a uniform constructor.

    Attributes
    ----------
    components_ : Tensor ``[k, C]``
        Orthonormal principal axes, by decreasing variance; each row's largest-|value| entry is > 0.
    mean_ : Tensor ``[C]``
        Mean of the training rows.
    explained_variance_ : Tensor ``[k]``
        Variance along each axis (denominator ``n − 1``, as scikit-learn).
    explained_variance_ratio_ : Tensor ``[k]``
        ``explained_variance_`` over the total variance.

    Examples
    --------
    >>> d = PCA(n_concepts=10).fit(A)                 # A [n, C] or [N, h, w, C]
    >>> U = d.encode(A); A_hat = d.decode(U)          # [..., 10], [..., C]
    """

    label = "PCA"
    #: fits from an ActivationStore (see :mod:`conceptlens.stream`)
    fits_store: ClassVar[bool] = True
    state_fields = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_")

    def __init__(self, n_concepts: int = 10, seed: int = 0) -> None:
        super().__init__(n_concepts=n_concepts, seed=seed)

    def fit(self, A: torch.Tensor | Any, layer_name: str | None = None) -> PCA:
        """Fit the principal axes on ``A``.

        Parameters
        ----------
        A : Tensor ``[n, C]`` or ``[..., C]``, or an activation store
            Activations. A store (:class:`~conceptlens.io.store.ActivationStore`, or any object with
            ``iter_batches(rows)``) is read once, batch by batch: the mean and the covariance are summed in
            float64, so memory is ``O(batch·C + C²)`` and the axes equal the in-memory ones up to the
            order of floating-point sums.
        layer_name : str, optional
            Unused; accepted so that every method can be called the same way.

        Returns
        -------
        PCA
            ``self``, with ``components_``, ``mean_``, ``explained_variance_``,
            ``explained_variance_ratio_``.
        """
        if not isinstance(A, torch.Tensor) and hasattr(A, "iter_batches"):
            return self._fit_store(A)
        rows = self._validate(A)
        dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        X = rows.to(dtype)
        n, C = X.shape
        k = self.n_concepts
        mean = X.mean(dim=0)
        Xc = X - mean
        denom = max(n - 1, 1)
        total = float(Xc.to(torch.float64).square().sum()) / denom
        if n >= C:
            # Tall matrices: the C×C covariance and its eigendecomposition cost n·C² + C³, well below
            # the SVD of the n×C matrix; eigh runs in float64 so small variances keep their digits.
            return self._from_cov((Xc.T @ Xc).to(torch.float64), mean, n, total, dtype)
        with small_ops():  # as eigh below
            _, s, vh = torch.linalg.svd(Xc.to(torch.float64), full_matrices=False)
        var = s[:k] ** 2 / denom
        W = vh[:k]
        if W.shape[0] < k:
            # Fewer rows than concepts: complete the basis with directions orthogonal to the data.
            W = self._complete_basis(W, k)
            var = torch.cat([var, var.new_zeros(k - var.shape[0])])
        return self._set(W, var, mean, total, dtype)

    def _from_cov(self, cov: torch.Tensor, mean: torch.Tensor, n: int, total: float,
                  dtype: torch.dtype) -> PCA:
        """Axes from the scatter matrix ``cov = Σ (a − mean)(a − mean)ᵀ [C, C]`` (float64) of ``n`` rows."""
        # LAPACK's eigh is a long chain of small parallel steps: in one thread it costs 0.6 s against 0.5 s
        # alone (C = 1280), and beside one busy 2-thread process 1.0-1.4 s against 1.3-11 s with two
        with small_ops():
            evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[: self.n_concepts]
        var = evals[order].clamp_min(0.0) / max(n - 1, 1)
        return self._set(evecs[:, order].T, var, mean, total, dtype)

    def _set(self, W: torch.Tensor, var: torch.Tensor, mean: torch.Tensor, total: float,
             dtype: torch.dtype) -> PCA:
        self.components_ = _fix_signs(W).to(dtype).contiguous()
        self.mean_ = mean.to(dtype)
        self.explained_variance_ = var.to(dtype)
        self.explained_variance_ratio_ = (var / total if total > 0 else torch.zeros_like(var)).to(dtype)
        return self

    def _fit_store(self, store: Any) -> PCA:
        """One streamed pass: ``Σ a`` and ``Σ a aᵀ`` in float64, centred at the end (a shift by the first
        batch's mean first keeps the subtraction ``Σ a aᵀ − n·mean meanᵀ`` from cancelling digits)."""
        n, s, S, shift, dtype = 0, None, None, None, torch.float32
        for batch in store.iter_batches(STORE_ROWS):
            rows = self._validate(batch)
            dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
            X = rows.to(torch.float64)
            if shift is None:
                shift = X.mean(dim=0)
                s = torch.zeros_like(shift)
                S = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
            check_channels(X, int(shift.shape[0]), "the first batch")
            Xs = X - shift
            s += Xs.sum(dim=0)
            S += Xs.T @ Xs
            n += X.shape[0]
        if shift is None or s is None or S is None:
            raise ActivationError("no activation rows to fit on (the store is empty)")
        d = s / n
        cov = S - n * torch.outer(d, d)
        total = float(torch.diagonal(cov).sum()) / max(n - 1, 1)
        return self._from_cov(cov, shift + d, n, total, dtype)

    @staticmethod
    def _complete_basis(W: torch.Tensor, k: int) -> torch.Tensor:
        """Extend orthonormal rows ``W [r, C]`` to ``k`` orthonormal rows (deterministically)."""
        C = W.shape[1]
        eye = torch.eye(C, dtype=W.dtype, device=W.device)
        q, _ = torch.linalg.qr(torch.cat([W, eye]).T)
        extra = q[:, W.shape[0] : k].T
        return torch.cat([W, extra])

    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        return (A - self.mean_.to(A.device)) @ self.components_.T

    def _decode_rows(self, U: torch.Tensor) -> torch.Tensor:
        return U @ self.components_ + self.mean_.to(U.device)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to save: ``components_``, ``mean_`` and the explained variances."""
        self._check_fitted("state_tensors")
        return {
            "components_": self.components_,
            "mean_": self.mean_,
            "explained_variance_": self.explained_variance_,
            "explained_variance_ratio_": self.explained_variance_ratio_,
        }
