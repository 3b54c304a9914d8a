"""k-means as a concept extractor (the ACE baseline): concepts are cluster centroids.

Notation (as in :mod:`conceptlens.decompose.base`):

=====  ==========  ==================================================================
``A``  ``[n, C]``  activations (any sign)
``W``  ``[k, C]``  ``components_``: the centroids
``U``  ``[n, k]``  one-hot codes of the nearest centroid, so ``U @ W`` is that centroid
=====  ==========  ==================================================================

Squared distances use ``‖a‖² − 2 a·c + ‖c‖²`` (one matrix product) on data centred by its mean,
which keeps the expansion accurate in float32.
"""

from __future__ import annotations

import math

import torch

from conceptlens.decompose.base import Decomposition, register
from conceptlens.errors import ActivationError, ParameterError

__all__ = ["KMeans"]


def _sqdist(X: torch.Tensor, x2: torch.Tensor, Cn: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[n, k]`` between rows of ``X [n, C]`` (norms ``x2 [n]``) and ``Cn [k, C]``."""
    c2 = Cn.square().sum(dim=1)
    d = torch.addmm(x2[:, None] + c2[None, :], X, Cn.T, alpha=-2.0)
    return d.clamp_min_(0.0)


def _kmeans_pp(X: torch.Tensor, x2: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007): centroid row indices ``[k]``.

    Each new centre is the best of ``2 + ln k`` candidates drawn with probability ∝ D², the squared
    distance to the nearest centre chosen so far.
    """
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen, device=X.device))
    idx = [first]
    closest = _sqdist(X, x2, X[first : first + 1])[:, 0]
    for _ in range(1, k):
        cum = torch.cumsum(closest.to(torch.float64), 0)
        pot = cum[-1]
        if float(pot) <= 0:
            # Fewer distinct points than centres: any remaining point is as good as another.
            cand = torch.randint(n, (trials,), generator=gen, device=X.device)
        else:
            r = torch.rand(trials, generator=gen, device=X.device, dtype=torch.float64) * pot
            cand = torch.searchsorted(cum, r).clamp_max_(n - 1)
        d = _sqdist(X[cand], x2[cand], X).T  # [n, trials] → distances of every row to each candidate
        new = torch.minimum(closest[:, None], d)
        best = int(new.sum(dim=0).argmin())
        idx.append(int(cand[best]))
        closest = new[:, best].contiguous()
    return torch.tensor(idx, device=X.device)


@register("kmeans")
class KMeans(Decomposition):
    """k-means clustering (k-means++ seeding, Lloyd iterations, best of ``n_init`` by inertia).

    Parameters
    ----------
    n_concepts : int
        Number of clusters ``k`` (``1 ≤ k ≤ C`` and ``k ≤ n``).
    n_init : int
        Number of seedings; the run with the lowest inertia is kept.
    max_iter : int
        Maximum Lloyd iterations per run.
    tol : float
        Stop a run when the squared centroid shift is at most ``tol`` × the mean per-channel variance.
    seed : int
        Seed of the k-means++ draws; same seed → same centroids.

    Attributes
    ----------
    components_ : Tensor ``[k, C]``
        Centroids.
    inertia_ : float
        Sum of squared distances of the training rows to their nearest centroid.
    n_iter_ : int
        Lloyd iterations of the kept run.

    Examples
    --------
    >>> d = KMeans(n_concepts=10, seed=0).fit(A)       # A [n, C] or [N, h, w, C]
    >>> U = d.encode(A)                                # one-hot [..., 10]
    """

    label = "k-means"

    def __init__(
        self, n_concepts: int = 10, n_init: int = 3, max_iter: int = 100, tol: float = 1e-4, seed: int = 0
    ) -> None:
        super().__init__(n_concepts=n_concepts, seed=seed)
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol

    def _check_params(self) -> None:
        for name in ("n_init", "max_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) or self.tol < 0:
            raise ParameterError(f"tol must be a finite number ≥ 0, got {self.tol!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ParameterError(f"seed must be an integer, got {self.seed!r}")

    def fit(self, A: torch.Tensor, layer_name: str | None = None) -> KMeans:
        """Cluster the rows of ``A``.

        Parameters
        ----------
        A : Tensor ``[n, C]`` or ``[..., C]``
            Activations.
        layer_name : str, optional
            Name of the layer, for error messages.

        Returns
        -------
        KMeans
            ``self``, with ``components_``, ``inertia_``, ``n_iter_``.
        """
        self._check_params()
        rows = self._validate(A)
        k = self.n_concepts
        if rows.shape[0] < k:
            where = f" of layer {layer_name!r}" if layer_name else ""
            raise ActivationError(
                f"k-means needs at least n_concepts={k} activation rows{where}, got {rows.shape[0]}; "
                "use more images or fewer concepts"
            )
        dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
        X = rows.to(dtype)
        mean = X.mean(dim=0)
        Xc = X - mean
        x2 = Xc.square().sum(dim=1)
        tol_abs = self.tol * float(Xc.var(dim=0, unbiased=False).mean())
        gen = torch.Generator(device=X.device).manual_seed(int(self.seed))
        runs = []
        for _ in range(self.n_init):
            centres, inertia, n_iter = self._lloyd(Xc, x2, Xc[_kmeans_pp(Xc, x2, k, gen)], tol_abs)
            runs.append((inertia, n_iter, centres))
        # Ties go to the earliest run, so the result does not depend on how ties are broken.
        self.inertia_, self.n_iter_, centres = min(runs, key=lambda r: r[0])
        self.components_ = (centres + mean).contiguous()
        return self

    def _lloyd(
        self, X: torch.Tensor, x2: torch.Tensor, centres: torch.Tensor, tol_abs: float
    ) -> tuple[torch.Tensor, float, int]:
        """Lloyd iterations from ``centres [k, C]``; returns centres, inertia and iterations run."""
        k = centres.shape[0]
        n_iter = 0
        for _ in range(self.max_iter):
            n_iter += 1
            d = _sqdist(X, x2, centres)
            dmin, labels = d.min(dim=1)
            onehot = torch.nn.functional.one_hot(labels, k).to(X.dtype)
            counts = onehot.sum(dim=0)
            # A matrix product rather than index_add keeps the sums deterministic and fast.
            new = (onehot.T @ X) / counts.clamp_min(1.0)[:, None]
            empty = torch.nonzero(counts == 0).flatten()
            if empty.numel():
                # Re-seed each empty cluster with one of the points farthest from its centroid.
                far = torch.topk(dmin, empty.numel()).indices
                new[empty] = X[far]
            shift = float((new - centres).square().sum())
            centres = new
            if shift <= tol_abs:
                break
        labels = _sqdist(X, x2, centres).argmin(dim=1)
        inertia = float((X - centres[labels]).square().sum(dtype=torch.float64))
        return centres, inertia, n_iter

    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        """One-hot codes ``[n, k]`` of the nearest centroid."""
        W = self.components_.to(A.device)
        # Distances are translation invariant; centring on the centroids keeps the expansion accurate.
        m = W.mean(dim=0)
        Ac = A - m
        labels = _sqdist(Ac, Ac.square().sum(dim=1), W - m).argmin(dim=1)
        return torch.nn.functional.one_hot(labels, W.shape[0]).to(W.dtype)
