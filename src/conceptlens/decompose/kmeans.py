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
from typing import Any, ClassVar

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


#: Rows per batch read from a store when ``batch_size`` is None.
STORE_ROWS = 8192


def _batches(A: Any, b: int) -> Any:
    """Batches ``[≤ b, C]`` of a tensor's rows or of a store."""
    if isinstance(A, torch.Tensor):
        return A.reshape(-1, A.shape[-1]).split(b)
    return A.iter_batches(b)


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
    batch_size : int or None
        ``None``: Lloyd on the whole matrix. An integer: the same Lloyd iterations streamed over batches of
        ``batch_size`` rows (each pass sums the batches' assignments into ``k`` centroids, in float64), with
        k-means++ seeded on the first batch; memory ``O(batch_size·C + k·C)``. ``fit`` also accepts an
        :class:`~conceptlens.io.store.ActivationStore` (rows read batch by batch; ``batch_size`` None there
        means 8192). The result does not depend on whether the rows come from memory or a store.

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
    fit_threads = 1  # Lloyd steps of small ops: beside a busy process 3.5 s at 1 thread, 5.8 s at 2
    #: fits from an ActivationStore (see :mod:`conceptlens.stream`)
    fits_store: ClassVar[bool] = True

    def __init__(
        self, n_concepts: int = 10, n_init: int = 3, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(n_concepts=n_concepts, seed=seed)
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size

    def _check_params(self) -> None:
        for name in ("n_init", "max_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) or self.tol < 0:
            raise ParameterError(f"tol must be a finite number ≥ 0, got {self.tol!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ParameterError(f"seed must be an integer, got {self.seed!r}")
        b = getattr(self, "batch_size", None)
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ParameterError(f"batch_size must be a positive integer or None, got {b!r}")

    def fit(self, A: torch.Tensor | Any, layer_name: str | None = None) -> KMeans:
        """Cluster the rows of ``A``.

        Parameters
        ----------
        A : Tensor ``[n, C]`` or ``[..., C]``, or an activation store
            Activations (a store, or ``batch_size`` set: the streamed Lloyd iterations).
        layer_name : str, optional
            Name of the layer, for error messages.

        Returns
        -------
        KMeans
            ``self``, with ``components_``, ``inertia_``, ``n_iter_``.
        """
        self._check_params()
        if (not isinstance(A, torch.Tensor) and hasattr(A, "iter_batches")) or self.batch_size is not None:
            return self._fit_streamed(A, layer_name)
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

    def _fit_streamed(self, A: Any, layer_name: str | None) -> KMeans:
        """Lloyd iterations over batches: per pass, ``Σ`` of the rows of each cluster and its count (float64),
        the ``k`` farthest rows kept for re-seeding empty clusters; k-means++ on the first batch."""
        b = self.batch_size or STORE_ROWS
        k = self.n_concepts
        n, s1, s2, first = 0, None, None, None
        for batch in _batches(A, b):  # pass 0: mean and variance (float64), the seeding batch
            X = self._validate(batch).to(torch.float64)
            if first is None:
                first = batch.reshape(-1, batch.shape[-1])
                s1, s2 = torch.zeros_like(X[0]), torch.zeros_like(X[0])
            s1 += X.sum(0)
            s2 += X.square().sum(0)
            n += X.shape[0]
        if first is None or s1 is None or s2 is None or n < k:
            where = f" of layer {layer_name!r}" if layer_name else ""
            raise ActivationError(f"k-means needs at least n_concepts={k} activation rows{where}, got {n}; "
                                  "use more images or fewer concepts")
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        mean64 = s1 / n
        tol_abs = self.tol * float((s2 / n - mean64.square()).clamp_min(0).mean())
        mean = mean64.to(dtype)
        F = first.to(dtype) - mean
        gen = torch.Generator(device=F.device).manual_seed(int(self.seed))
        if F.shape[0] < k:
            raise ActivationError(f"the first batch has {F.shape[0]} rows, fewer than n_concepts={k}: use a "
                                  "batch_size of at least n_concepts")
        runs = []
        for _ in range(self.n_init):
            centres = F[_kmeans_pp(F, F.square().sum(1), k, gen)]
            n_iter = 0
            for _ in range(self.max_iter):
                n_iter += 1
                sums, counts, far, _ = self._pass(A, b, mean, centres)
                new = (sums / counts.clamp_min(1.0)[:, None]).to(dtype)
                empty = torch.nonzero(counts == 0).flatten()
                if empty.numel():
                    new[empty] = far[: empty.numel()].to(dtype)
                shift = float((new - centres).square().sum())
                centres = new
                if shift <= tol_abs:
                    break
            inertia = self._pass(A, b, mean, centres)[3]
            runs.append((inertia, n_iter, centres))
        self.inertia_, self.n_iter_, centres = min(runs, key=lambda r: r[0])
        self.components_ = (centres + mean).contiguous()
        return self

    def _pass(self, A: Any, b: int, mean: torch.Tensor, centres: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """One pass: cluster sums ``[k, C]`` and counts ``[k]`` (float64), the ``k`` rows farthest from their
        centroid ``[≤ k, C]`` (farthest first), and the inertia."""
        k = centres.shape[0]
        sums = torch.zeros(k, centres.shape[1], dtype=torch.float64, device=centres.device)
        counts = torch.zeros(k, dtype=torch.float64, device=centres.device)
        far_d = torch.empty(0, dtype=centres.dtype, device=centres.device)
        far = centres[:0]
        inertia = 0.0
        for batch in _batches(A, b):
            X = batch.reshape(-1, batch.shape[-1]).to(centres.device, centres.dtype) - mean
            dmin, labels = _sqdist(X, X.square().sum(1), centres).min(dim=1)
            onehot = torch.nn.functional.one_hot(labels, k).to(X.dtype)
            sums += (onehot.T @ X).double()
            counts += onehot.sum(0).double()
            inertia += float((X - centres[labels]).square().sum(dtype=torch.float64))
            # stable top-k over (earlier rows, this batch): ties keep the earlier row, as one topk would
            cand_d, cand = torch.cat([far_d, dmin]), torch.cat([far, X])
            top = torch.sort(cand_d, descending=True, stable=True).indices[:k]
            far_d, far = cand_d[top], cand[top]
        return sums, counts, far, inertia

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
