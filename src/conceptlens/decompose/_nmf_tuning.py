"""NMF's tuning constants, named and documented in one place (each says why it has its value).

Notation as in :mod:`conceptlens.decompose.nmf`: ``A [n, C]`` activations, ``W [k, C]`` the bank,
``Uᵀ [k, n]`` the codes; a *sweep* is one pass of HALS over the ``k`` rows of a factor; ``ρ`` is the cost
of a half-step's products over the cost of one sweep. The values were chosen on real EfficientNet-Lite0
activations (12,103 × 1,280, ~10 % non-zero) and are checked by ``conceptlens bench nmf``
(``bench/results/nmf.json``); the comments record the measurement behind each choice.
"""

from __future__ import annotations

import torch

#: The default ``tol`` of NMF and CRAFT (see :class:`conceptlens.decompose.nmf.NMF`).
DEFAULT_TOL = 1e-4

# -- the inner sweeps of a fit's half-step ----------------------------------------------------------
# Gillis & Glineur's recommended constants: at most 1 + α·ρ inner sweeps and stop a block once a sweep
# changes it by less than δ × the first one.
ALPHA = 0.5
DELTA = 0.1
MAX_SWEEPS = 30
# Cost of one small kernel launch, in flop equivalents (~5 µs at 20 GFLOP/s): a sweep runs two kernels
# per row, so for small m·k the launches, not the flops, are its cost.
OVERHEAD = 100_000
# Entries are kept ≥ FLOOR × scale during fit so that no row or column of a factor becomes exactly zero
# (a zero column makes its Gram diagonal zero and the HALS step undefined).
FLOOR = 1e-10

# -- the outer stopping rule (see solvers.converged) --------------------------------------------------
# The second test: stop once the improvement still to come, extrapolated geometrically from the last
# STOP_WINDOW decreases, is below STOP_AHEAD × tol.
STOP_AHEAD = 10.0
STOP_WINDOW = 4

# -- encoding (one NNLS to convergence rather than one alternating step; see _nmf_encode) ---------------
ENCODE_MAX_SWEEPS = 500  # the mu solver's budget
ENCODE_DELTA = 1e-4  # the mu solver's stopping rule (relative to its first step)
# HALS encoding: ENCODE_FULL sweeps over every row, then a KKT check every ENCODE_CHECK sweeps; a row is done
# once its natural residual is at most τ‖W a‖ with τ = √(ε/κ(WWᵀ)), which bounds its objective's excess by
# ε·½‖a‖² (ε by dtype below: float32 cannot resolve a residual much under 1e-6·‖W a‖, so its ε is larger).
# float32's ε: on the quick Lite0 bank (k = 25, κ = 607; 20,000 rows) 1e-9, 1e-8 and 1e-7 left a worst
# excess over scipy of 3e-11, 6e-10 and 5e-9 (relative; the old step-size rule 8e-8, scikit-learn 1e-7)
# for 8.3, 7.5 and 6.8 sweeps a row (old rule 6.2): 1e-8 keeps most of the speed.
# The rows that pass leave the sweeps; a row whose residual, falling at its last rate, would not pass
# within ENCODE_HALS_SWEEPS sweeps leaves for the exact finish (block principal pivoting: ~1-2 ms a call
# plus ~15 µs a row and pivoting step at k = 25). Every decision is the row's own: its codes do not depend
# on the rows encoded with it.
ENCODE_EXCESS = {torch.float64: 1e-14, torch.float32: 1e-8, torch.float16: 1e-5, torch.bfloat16: 1e-4}
# The first check after ENCODE_FULL sweeps: checks before the block is compacted cost without saving sweeps
# (the block is swept whole until ≤ ENCODE_COMPACT still runs). CPU time / the old step-size rule's on 20,000
# real Lite0 rows (k = 25, our bank, κ = 14): 1.22 / 1.16 / 1.14 with the first check at 4 / 6 / 8 sweeps
# (on the quick bank, κ = 607: 1.45 / 1.39 / 1.29); 6 keeps easy (well-conditioned) rows at the old 6.
ENCODE_FULL = 6
ENCODE_CHECK = 2
ENCODE_HALS_SWEEPS = 60
# The block is swept whole (the rows that passed keep the codes taken when they passed) until at most this
# fraction of it still runs; then the running rows are gathered into a smaller block (0.4: 8.9 sweeps a row
# on the quick Lite0 bank at ε = 1e-9, 0.8: 8.4, gathering at every check: 8.3 but slower in all).
ENCODE_COMPACT = 0.8
# The exact finish: an entry is infeasible once it is below −EXACT_TOL × the row's largest code (in the
# support) or its gradient below −EXACT_TOL × (‖W a‖ + ‖Q‖‖x‖) (off it): float64 rounding of the
# support's solve must not make entries change sides forever. Kim & Park's method is finite (from the HALS
# support it took 1-3 steps in our tests); the cap only guards a singular Gram (duplicated bank rows),
# whose rows that do not settle keep their HALS codes.
EXACT_TOL = 1e-10
EXACT_MAX_ITER = 30
# Codes per encode block (k × rows): bounds the encode's working memory (P and X, 2 MB each in float32) and
# keeps a block's sweeps in the core's cache. 100,000 real Lite0 rows, k = 25, one thread (16:40, load
# ~1.2): 2**22 (16 MB) 0.35-0.37 s, 2**19 0.26-0.33 s, 2**18 0.25-0.34 s (more blocks: more small kernels).
ENCODE_ELEMS = 2**19

# -- the products with A --------------------------------------------------------------------------
# Entries of A per block of the product W Aᵀ on CPU: a block that stays in cache was ~20 % faster than the
# single product at k = 25, C = 1,280 (a thin product that streams A from memory).
PRODUCT_ELEMS = 2**20
# Below this density (fraction of non-zeros) the two [n,C]×[C,k] products use CSR copies of A on CPU:
# measured 3-4× faster than dense at Lite0's ~10 % density (the bench records it).
SPARSE_DENSITY = 0.15
# Entries of A per scanning thread when CSR copies are built (below: one thread; the pool costs ~0.2 ms).
# The scan releases the GIL: on the Lite0 matrix with 2 threads it took 16–19 instead of 35–43 ms, the
# whole CSR build 42 instead of 49 ms (medians of 25 interleaved runs).
SCAN_ELEMS = 2**21
# Rows of M per block of the product Aᵀ M with CSR copies: 2,048 × 35 floats = 280 KB stay in the core's
# cache while its rows are gathered; on the Lite0 matrix Aᵀ M took 4.7 instead of 5.5 ms at 25 columns and
# 7.0 instead of 8.6 ms at 35 (one thread).
RMM_BLOCK_ROWS = 2048
# Sparse products widen their dense operand to a multiple of PAD_COLS columns when it has more than
# PAD_MIN: MKL's CSR × dense kernels run whole SIMD widths of dense columns. On the Lite0 matrix (one
# thread) both products took 10.0 ms at 25 columns and 8.9 ms at 32, 8.4 at 20 and 6.8 at 24, 15.0 at 35
# and 14.0 at 40; at 10 columns, 16 were slower (5.1 vs 4.3 ms), at 50 no faster.
PAD_COLS = 8
PAD_MIN = 16

# -- initialisation -------------------------------------------------------------------------------
# Power iterations of the randomised SVD inside fit: NNDSVD only needs a rough leading subspace, and HALS
# corrects the rest in its first sweeps.
POWER_ITERS = 2
# Extra columns of the randomised range finder beyond the rank wanted (Halko et al. recommend 5–10).
# Measured with 5 on the Lite0 matrix: 7 % faster to 1 % of cd's error, but the default run then stopped
# 0.7 % worse at k = 10 (seed 2) and took 17 instead of 8 iterations at k = 25 (seed 0).
OVERSAMPLE = 10

# -- streaming --------------------------------------------------------------------------------------
# Rows per batch when a store is fitted without an explicit batch_size.
STORE_BATCH = 8192
