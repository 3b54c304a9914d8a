"""The two products NMF needs with its data, dense or sparse: ``A M`` and ``Aᵀ M`` (and ``W Aᵀ``).

Notation (as in :mod:`conceptlens.decompose.nmf`):

=====  ==========  ==============================================================
``A``  ``[n, C]``  non-negative activations, one row per spatial position or image
``M``  ``[C, r]``  a dense operand of ``A M`` (``r = k``: ``A Wᵀ``), or ``[n, r]`` of ``Aᵀ M``
``W``  ``[k, C]``  the concept bank
=====  ==========  ==============================================================

Every outer HALS iteration costs two ``[n, C] × [C, k]`` products. Activations after a ReLU-like layer are
mostly zeros, so on CPU :class:`DataProducts` keeps CSR copies of ``A`` and ``Aᵀ`` and makes both products
proportional to the non-zeros; on accelerators and for dense data it uses the dense products. The results
equal the dense products up to the order of floating-point sums. The block sizes and the density
threshold are in :mod:`conceptlens.decompose._nmf_tuning`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from conceptlens.decompose._nmf_tuning import (
    PAD_COLS,
    PAD_MIN,
    PRODUCT_ELEMS,
    RMM_BLOCK_ROWS,
    SCAN_ELEMS,
    SPARSE_DENSITY,
)

__all__ = ["DataProducts", "cross_product"]


def cross_product(W: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``W Aᵀ``: ``[k, C] × [C, n] → [k, n]``, on CPU in blocks of rows of ``A`` that stay in cache.

    One block of ``PRODUCT_ELEMS`` entries of ``A`` at a time, written into one output (a thin product
    streams ``A`` from memory; a block in cache is faster). On other devices: the single product.

    Parameters
    ----------
    W : Tensor ``[k, C]``
        The bank.
    A : Tensor ``[n, C]``
        Rows, on ``W``'s dtype.

    Returns
    -------
    Tensor ``[k, n]``
        ``W @ A.T``.
    """
    k, C = W.shape
    n = A.shape[0]
    if A.device.type != "cpu":
        return W @ A.T
    P = torch.empty(k, n, dtype=W.dtype, device=A.device)
    pb = max(64, PRODUCT_ELEMS // max(C, 1))
    for t in range(0, n, pb):
        torch.mm(W, A[t : t + pb].T, out=P[:, t : t + pb])
    return P


class DataProducts:
    """``A [n, C]`` with the products the solvers need: ``A @ M`` and ``Aᵀ @ M``.

    On CPU, when ``A`` is mostly zeros (ReLU activations), CSR copies of ``A`` and of ``Aᵀ`` (the latter
    in column blocks, see :func:`_csr_pair`) make both products proportional to the non-zeros.

    Parameters
    ----------
    A : Tensor ``[n, C]``
        The data (kept, not copied).
    sparse : bool or None
        ``True``: CSR copies; ``False``: dense products; ``None``: CSR on CPU when the density is at most
        ``SPARSE_DENSITY``, dense on accelerators.

    Attributes
    ----------
    sparse : bool
        Whether the products use CSR copies.
    density : float
        Fraction of non-zero entries of ``A`` (``1.0`` when ``sparse=False`` was asked).
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
        self.sparse = bool(sparse) if sparse is not None else self.density <= SPARSE_DENSITY
        if self.sparse:
            self._csr, self._csr_t = _csr_pair(A, parts)

    def row_blocks(self, parts: int) -> list[DataProducts]:
        """This data cut into at most ``parts`` contiguous blocks of rows, each with its own products.

        The blocks are views (no copy of ``A`` or of its CSR copies); with CSR copies the cuts fall on
        the borders of ``Aᵀ``'s column blocks (see :func:`_csr_pair`), so that each block's ``Aᵀ M`` uses
        the same cached blocks. ``A M`` is the concatenation of the blocks' and ``Aᵀ M`` their sum.
        """
        n = self.A.shape[0]
        if not self.sparse:
            p = max(1, min(int(parts), n))
            cuts = [n * i // p for i in range(p + 1)]
            return [DataProducts(self.A[lo:hi], sparse=False)
                    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
        t = self._csr_t
        p = max(1, min(int(parts), len(t)))
        groups = [t[len(t) * i // p: len(t) * (i + 1) // p] for i in range(p)]
        crow, col, val = self._csr.crow_indices(), self._csr.col_indices(), self._csr.values()
        out = []
        for g in groups:
            lo, hi = g[0][0], g[-1][1]
            a, z = int(crow[lo]), int(crow[hi])
            b = DataProducts(self.A[lo:hi], sparse=False)
            b.sparse, b.density = True, self.density
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                b._csr = torch.sparse_csr_tensor(crow[lo: hi + 1] - a, col[a:z], val[a:z],
                                                 size=(hi - lo, self.A.shape[1]), check_invariants=False)
            b._csr_t = [(l0 - lo, h0 - lo, blk) for l0, h0, blk in g]
            out.append(b)
        return out

    def mean_max(self) -> tuple[torch.Tensor, float]:
        """``(mean(A), max(A))``, from the non-zeros alone when CSR copies exist (a tenth of the reads)."""
        if self.sparse:
            v = self._csr.values()
            top = float(v.max()) if v.numel() else 0.0
            return v.sum(dtype=torch.float64).to(v.dtype) / max(self.A.numel(), 1), top
        return self.A.mean(), float(self.A.max()) if self.A.numel() else 0.0

    def _padded(self, M: torch.Tensor) -> torch.Tensor:
        """``M [m, r]`` as a contiguous operand of a sparse product, widened with zero columns to a multiple
        of ``PAD_COLS`` when ``r > PAD_MIN`` (one zero buffer per shape, kept for the fit).

        MKL's CSR × dense kernels run whole SIMD widths of dense columns (see ``PAD_COLS``). The extra
        columns are zeros and are sliced off, so the results are those of the narrow product.
        """
        r = M.shape[1]
        wide = -(-r // PAD_COLS) * PAD_COLS
        if r <= PAD_MIN or wide == r or M.device.type != "cpu":
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
    block. The scan (numpy's ``flatnonzero`` on a boolean mask, faster than on the floats) is the costly
    part of building CSR copies and numpy releases the GIL in it, so with more than one torch thread the
    row blocks (``SCAN_ELEMS`` entries or more each) are scanned by that many threads.
    """
    import numpy as np

    a = A.detach().contiguous().numpy()
    n, C = a.shape

    def scan(lo: int, hi: int) -> tuple[Any, Any, Any]:
        blk = a[lo:hi]
        flat = np.flatnonzero(blk != 0)
        counts = np.diff(np.searchsorted(flat, np.arange(0, (hi - lo + 1) * C, C, dtype=flat.dtype)))
        return blk.ravel()[flat], (flat % C).astype(np.int32), counts.astype(np.int32)

    workers = min(torch.get_num_threads(), max(1, a.size // SCAN_ELEMS))
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
    ``RMM_BLOCK_ROWS``) stays in the core's cache while its rows are gathered. Built with numpy/scipy from
    the non-zeros (:func:`_nonzeros`, or ``parts`` when already scanned) and O(nnz) transposes, much faster
    than ``to_sparse_csr`` on a dense tensor.
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
    step = max(int(block_rows or RMM_BLOCK_ROWS), 1)
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
