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

import torch

from conceptlens.decompose.base import Decomposition, register

__all__ = ["PCA"]


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
    state_fields = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_")

    def __init__(self, n_concepts: int = 10, seed: int = 0) -> None:
        super().__init__(n_concepts=n_concepts, seed=seed)

    def fit(self, A: torch.Tensor, layer_name: str | None = None) -> PCA:
        """Fit the principal axes on ``A``.

        Parameters
        ----------
        A : Tensor ``[n, C]`` or ``[..., C]``
            Activations.
        layer_name : str, optional
            Unused; accepted so that every method can be called the same way.

        Returns
        -------
        PCA
            ``self``, with ``components_``, ``mean_``, ``explained_variance_``,
            ``explained_variance_ratio_``.
        """
        rows = self._validate(A)
        dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        X = rows.to(dtype)
        n, C = X.shape
        k = self.n_concepts
        mean = X.mean(dim=0)
        Xc = X - mean
        denom = max(n - 1, 1)
        if n >= C:
            # Tall matrices: the C×C covariance and its eigendecomposition cost n·C² + C³, well below
            # the SVD of the n×C matrix; eigh runs in float64 so small variances keep their digits.
            cov = (Xc.T @ Xc).to(torch.float64)
            evals, evecs = torch.linalg.eigh(cov)
            order = torch.argsort(evals, descending=True)[:k]
            var = evals[order].clamp_min(0.0) / denom
            W = evecs[:, order].T
        else:
            _, s, vh = torch.linalg.svd(Xc.to(torch.float64), full_matrices=False)
            var = s[:k] ** 2 / denom
            W = vh[:k]
            if W.shape[0] < k:
                # Fewer rows than concepts: complete the basis with directions orthogonal to the data.
                W = self._complete_basis(W, k)
                var = torch.cat([var, var.new_zeros(k - var.shape[0])])
        total = float(Xc.to(torch.float64).square().sum()) / denom
        self.components_ = _fix_signs(W).to(dtype).contiguous()
        self.mean_ = mean
        self.explained_variance_ = var.to(dtype)
        self.explained_variance_ratio_ = (var / total if total > 0 else torch.zeros_like(var)).to(dtype)
        return self

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
