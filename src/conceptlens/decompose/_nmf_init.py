"""NMF's initialisation: NNDSVD (Boutsidis & Gallopoulos 2008) on a seeded randomised SVD.

Notation (as in :mod:`conceptlens.decompose.nmf`): ``A [n, C]`` non-negative data, ``k`` concepts,
``Ut [k, n]`` and ``W [k, C]`` the starting factors, ``Utᵀ W ≈ A``; ``u [n, r]``, ``s [r]``, ``vh [r, C]``
the leading ``r = min(k, n, C)`` singular triplets of ``A``.

NNDSVD keeps the positive or the negative part of each singular pair (whichever carries more of it),
which gives a sparse, non-negative start close to the best rank-``k`` approximation. Only a rough leading
subspace is needed (HALS corrects the rest in its first sweeps), so on tall matrices the SVD is a
randomised range finder (Halko, Martinsson & Tropp 2011) with few power iterations, run on the products
of :class:`~conceptlens.decompose._nmf_products.DataProducts` (CSR when ``A`` is mostly zeros).
"""

from __future__ import annotations

import torch

from conceptlens.decompose._nmf_products import DataProducts
from conceptlens.decompose._nmf_tuning import OVERSAMPLE

__all__ = ["INITS", "nndsvd_init", "top_svd"]

#: The initialisations :func:`nndsvd_init` knows.
INITS = ("nndsvd", "nndsvda", "nndsvdar", "random")


def top_svd(
    A: torch.Tensor, r: int, gen: torch.Generator, data: DataProducts | None = None, power_iters: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leading ``r`` singular triplets of ``A [n, C]``: ``(u [n, r], s [r], vh [r, C])``.

    Exact SVD when the small side is small; otherwise a seeded randomised range finder with power
    iterations (Halko, Martinsson & Tropp 2011), which is what makes NNDSVD cheap on tall matrices.

    Parameters
    ----------
    A : Tensor ``[n, C]``
        The data.
    r : int
        Number of triplets, ``r ≤ min(n, C)``.
    gen : torch.Generator
        Source of the random test matrix (on ``A``'s device).
    data : DataProducts, optional
        The products with ``A`` to use (CSR copies when sparse; or anything with the same ``mm`` / ``rmm``,
        such as the fit's :class:`~conceptlens.decompose._nmf_split.RowBlocks`); default dense products.
    power_iters : int
        Power iterations (more: closer to the exact leading subspace).

    Returns
    -------
    (u, s, vh) : Tensors ``[n, r]``, ``[r]``, ``[r, C]``
    """
    n, C = A.shape
    q = min(r + OVERSAMPLE, n, C)
    if min(n, C) <= 4 * q:
        u, s, vh = torch.linalg.svd(A, full_matrices=False)
        return u[:, :r], s[:r], vh[:r]
    d = data if data is not None else DataProducts(A, sparse=False)
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
    data: DataProducts | None = None,
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
    data : DataProducts, optional
        The products with ``A`` already built for the fit (saves building CSR copies twice; the fit passes
        its :class:`~conceptlens.decompose._nmf_split.RowBlocks`, whose products run in its workers).

    Returns
    -------
    (Ut, W) : Tensors ``[k, n]`` and ``[k, C]``
        Non-negative factors, ``Utᵀ W ≈ A``.
    """
    n, C = A.shape
    gen = torch.Generator(device=A.device).manual_seed(int(seed))
    if data is None and sparse is not False and variant != "random":
        data = DataProducts(A, sparse)
    avg, top = data.mean_max() if data is not None else (A.mean(), float(A.max()) if A.numel() else 0.0)
    if variant == "random":
        scale = torch.sqrt(avg / k)
        Ut = scale * torch.randn(k, n, generator=gen, device=A.device, dtype=A.dtype).abs_()
        W = scale * torch.randn(k, C, generator=gen, device=A.device, dtype=A.dtype).abs_()
        return Ut, W
    r = min(k, n, C)
    u, s, vh = top_svd(A, r, gen, data, power_iters)
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
