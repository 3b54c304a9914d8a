"""``conceptlens bench nmf``: our NMF against scikit-learn's (``cd`` and ``mu``), same process, interleaved.

Notation: ``A [n, C]`` activations, ``k`` concepts, ``W [k, C]`` the bank, ``U [n, k]`` the codes.

The machine this runs on may be shared, so absolute timings mean little: every comparison is a *ratio*
of two timings taken in the same process, the two programs run alternately (A/B/A/B, ``reps`` rounds)
and each ratio is the median over rounds.

What is measured, per matrix (real EfficientNet-Lite0 activations; a planted ``A = U* W* + noise``)
and per ``k``:

* scikit-learn ``NMF(init="nndsvda", solver="cd")`` and ``solver="mu"`` (defaults otherwise): time,
  relative error ``‖A − UW‖_F / ‖A‖_F``, iterations;
* ours with default settings ``NMF(n_concepts=k).fit(A)``: time, error, iterations, and the speed-up
  ``t_sklearn_cd / t_ours`` (meaningful when our error is within 1 % of sklearn-cd's);
* ours run until its error first comes within 1 % of sklearn-cd's final error: that time and the
  speed-up ``t_sklearn_cd / t_ours_to_1pct``;
* achieved GFLOP/s of our default run (``4·n·C·k + 2·(n + C)·k²`` flops per outer iteration: the two
  ``[n,C]×[C,k]`` products plus the two Gram products) against ``torch.matmul`` on the same shapes
  timed in the same run; the floor's share of our run (``floor_fraction``: the two products per outer
  iteration timed as dense ``torch.matmul``, × our iterations, / our time) and the share of the products
  as our run computes them (``products_fraction``: CSR products when ``A`` is sparse);
* peak memory of one fit each: the growth of the process' peak resident size during the call, reset first
  (:func:`peak_rss_growth`, Linux), for both; scikit-learn's ``tracemalloc`` peak (numpy registers its
  buffers with it); the size of the tensors our solver holds (analytic working set);
* encode with the bank frozen of 100,000 rows (``A`` tiled): ours against scikit-learn's
  ``transform``, both with scikit-learn's bank, time ratio and errors, and each one's distance from the
  exact NNLS optimum on 200 rows (scipy's objective excess, supports that differ);
* where the rest of our run goes: the fixed costs (CSR copies, NNDSVD initialisation) and the share of
  the two products in the outer iterations alone (``loop_products_fraction``); and, as the alternative
  initialisation, the cost of the top-``k`` eigenvectors of the ``[C, C]`` Gram ``AᵀA`` (sparse product
  plus ``eigh``) against our randomised SVD;
* the machine's load average before and after the run (the machine may be shared).

Everything above runs with one thread each (reproducible on a shared machine); then the headline row
(``k = 25`` on the real matrix, 5 rounds) and the encode run again with two threads each, the issue's
"same 2 cores" (``two_threads`` in the JSON).
"""

from __future__ import annotations

import hashlib
import statistics
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["run", "real_activations", "planted_problem", "time_to_target", "peak_rss_growth"]

_ENCODE_ROWS = 100_000


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
# Seconds of pause before each timed call (see _settle). Measured with two threads each: ours at k = 25 took
# 222 ms right after scikit-learn, 169 ms after a 0.3 s pause and 151 ms warm; with one thread each the
# pause made no difference (217 vs 226 ms).
_SETTLE_S = 0.3
# Interleaved rounds for the headline measurements (k = 25 on the real matrix, the encode, and both with two
# threads): this machine's timings are noisy.
_HEADLINE_REPS = 5
# The tolerance of the bench's "loose" row: the whole call at 10× the default tol, timed with the rest.
LOOSE_TOL = 1e-3
# (patch, stride) in pixels of the 224² photos: the crops that make the full bench matrix
_CROPS = ((112, 56), (160, 32))


def _cache_dir() -> Path:
    from conceptlens.world.cnn import default_cache_dir

    return default_cache_dir() / "bench_nmf"


def real_activations(quick: bool = False) -> torch.Tensor:
    """EfficientNet-Lite0 activations at layer ``"auto"`` on the demo data, cached on disk.

    Parameters
    ----------
    quick : bool
        ``True``: the 13 whole sample photos (637 rows); ``False``: the issue's ~12,500 × 1,280 matrix,
        from 247 images: the 13 photos whole plus their crops of 112 px every 56 px and of 160 px every
        32 px (9 + 9 per photo, resized to 224²), 49 positions each: 12,103 rows.

    Returns
    -------
    Tensor ``[n, 1280]``
        float32, non-negative. Cached under the user cache dir keyed by the library and torch versions
        (the forward pass is slow on a CPU).
    """
    from safetensors.torch import load_file, save_file

    import conceptlens as cl

    key = hashlib.sha256(f"{cl.__version__}|{torch.__version__}|{quick}|{_CROPS}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"effnet_lite0_{'photos' if quick else 'crops'}_{key}.safetensors"
    if path.exists():
        try:
            return load_file(str(path))["A"]
        except Exception:  # a corrupt cache is recomputed, never trusted
            path.unlink(missing_ok=True)
    model = cl.models.load("efficientnet_lite0")
    split = cl.ModelSplit(model)
    photos = cl.data.sample_images(model.preset)
    size = photos.shape[-1]
    x = [photos] + ([] if quick else [cl.data.crops(photos, p, s, out_size=size)[0] for p, s in _CROPS])
    with torch.no_grad():
        A = torch.cat([split.g(b) for part in x for b in part.split(32)])
    A = A.reshape(-1, A.shape[-1]).float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"A": A}, str(tmp))
    tmp.replace(path)
    return A


def planted_problem(n: int, C: int, k: int, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """``A = U* W* + noise`` with ``U* = rand³ [n, k]``, ``W* [k, C]`` 30 % dense, noise ``noise·std(A)``.

    Returns
    -------
    Tensor ``[n, C]``
        float32, non-negative.
    """
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, k, generator=g) ** 3
    W = torch.rand(k, C, generator=g) * (torch.rand(k, C, generator=g) < 0.3)
    A = U @ W
    return (A + noise * A.std() * torch.rand(n, C, generator=g)).contiguous()


def _rel(A: np.ndarray, U: np.ndarray, W: np.ndarray) -> float:
    A64 = A.astype(np.float64)
    return float(np.linalg.norm(A64 - U.astype(np.float64) @ W.astype(np.float64)) / np.linalg.norm(A64))


def _settle() -> None:
    """Pause before a timed call so that the other library's worker threads have stopped spinning.

    After a BLAS call, numpy's OpenBLAS keeps its worker threads busy-waiting for ~0.1 s (and torch's
    OpenMP threads spin briefly too): with two threads each, a call that starts right after the other
    library's is slower (see ``_SETTLE_S``). A program that uses one library alone never pays that, so
    neither should the ratio.
    """
    time.sleep(_SETTLE_S)


def _sk(A: np.ndarray, k: int, solver: str) -> dict[str, Any]:
    from conceptlens.bench import peer

    SkNMF = peer("sklearn.decomposition", "scikit-learn").NMF  # noqa: N806 - scikit-learn's class

    _settle()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter warnings
        t, c = time.perf_counter(), time.process_time()
        m = SkNMF(n_components=k, init="nndsvda", solver=solver, random_state=0)
        U = m.fit_transform(A)
        dt, dc = time.perf_counter() - t, time.process_time() - c
    return {"time_s": dt, "cpu_s": dc, "err": _rel(A, U, m.components_), "iters": int(m.n_iter_), "model": m}


def _ours(
    A: torch.Tensor, k: int, *, stop_below: float | None = None, sparse: bool | None = None,
    tol: float | None = None,
) -> dict:
    from conceptlens.decompose import NMF

    if stop_below is not None:  # run on until the error reaches stop_below
        m = NMF(k, tol=0.0, max_iter=1000)
        m.stop_below = stop_below
    else:
        m = NMF(k) if tol is None else NMF(k, tol=tol)
    if sparse is not None:
        m.sparse_products = sparse
    _settle()
    t, c = time.perf_counter(), time.process_time()
    m.fit(A)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    return {"time_s": dt, "cpu_s": dc, "err": float(m.reconstruction_err_), "iters": int(m.n_iter_),
            "model": m}


def time_to_target(history: list[float], times: list[float], target: float) -> float | None:
    """Seconds at which ``history`` first reaches ``≤ target`` (``None`` if never)."""
    for h, t in zip(history, times, strict=True):
        if h <= target:
            return t
    return None


def _timeit(f: Any, reps: int = 3) -> float:
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


def _product_times(A: torch.Tensor, k: int) -> dict[str, float]:
    """Seconds for the two ``[n,C]×[C,k]`` products per outer iteration, dense and CSR."""
    from conceptlens.decompose.nmf import DataProducts

    n, C = A.shape
    g = torch.Generator().manual_seed(0)
    W, Ut = torch.rand(k, C, generator=g), torch.rand(k, n, generator=g)
    dense = _timeit(lambda: (W @ A.T, Ut @ A))
    d = DataProducts(A, sparse=True)
    sparse = _timeit(lambda: (d.mm(W.T), d.rmm(Ut.T)))
    return {"dense_pair_s": dense, "sparse_pair_s": sparse, "matmul_gflops": 4 * n * C * k / dense / 1e9}


def _overhead_times(A: torch.Tensor, k: int) -> dict[str, float]:
    """Seconds of the fixed costs of a default fit: the CSR copies and the NNDSVD initialisation."""
    from conceptlens.decompose.nmf import POWER_ITERS, DataProducts, nndsvd_init

    d = DataProducts(A)
    return {"csr_s": _timeit(lambda: DataProducts(A)) if d.sparse else 0.0,
            "init_s": _timeit(lambda: nndsvd_init(A, k, "nndsvda", 0, sparse=d.sparse,
                                                  power_iters=POWER_ITERS, data=d))}


def _gram_init_times(A: torch.Tensor, k: int) -> dict[str, float]:
    """The initialisation we use (randomised SVD on the CSR copies, ``POWER_ITERS`` power iterations)
    against the top-``k`` eigenvectors of the ``[C, C]`` Gram ``AᵀA`` (sparse product + ``eigh``)."""
    from scipy import sparse as sp

    from conceptlens.decompose.nmf import POWER_ITERS, DataProducts, top_svd

    d = DataProducts(A)
    g = torch.Generator().manual_seed(0)
    csr = sp.csr_matrix(A.numpy())

    def gram() -> Any:
        G = torch.from_numpy((csr.T @ csr).toarray())
        return torch.linalg.eigh(G)

    return {"k": k, "randomized_svd_s": _timeit(lambda: top_svd(A, k, g, d, POWER_ITERS)),
            "gram_eigh_s": _timeit(gram, reps=1)}


def _bench_one(A: torch.Tensor, k: int, reps: int, with_mu: bool) -> dict[str, Any]:
    n, C = A.shape
    An = A.numpy()
    rounds = []
    mu = _sk(An, k, "mu") if with_mu else None
    _sk(An, k, "cd"), _ours(A, k)  # warm-up (caches, allocator, lazily loaded kernels), untimed
    for _ in range(reps):  # interleaved: sklearn, ours, ours-to-1 %, ours dense, ours loose, sklearn, ...
        cd = _sk(An, k, "cd")
        ours = _ours(A, k)
        to1 = _ours(A, k, stop_below=1.01 * cd["err"])
        dense = _ours(A, k, sparse=False)
        loose = _ours(A, k, tol=LOOSE_TOL)
        t1 = time_to_target(to1["model"].history_, to1["model"].times_, 1.01 * cd["err"])
        rounds.append({"cd": cd, "ours": ours, "to1": to1, "dense": dense, "loose": loose, "t_to1": t1})
    pt = _product_times(A, k)
    oh = _overhead_times(A, k)
    med = statistics.median
    last = rounds[-1]
    sparse_used = bool(getattr(last["ours"]["model"], "sparse_used_", _is_sparse(A)))
    flops_it = 4 * n * C * k + 2 * (n + C) * k * k
    t_ours = med(r["ours"]["time_s"] for r in rounds)
    it_ours = last["ours"]["iters"]
    pair = pt["sparse_pair_s"] if sparse_used else pt["dense_pair_s"]
    ratio_to1 = [r["cd"]["time_s"] / r["t_to1"] for r in rounds if r["t_to1"]]
    t_fixed = oh["init_s"] + (oh["csr_s"] if sparse_used else 0.0)
    row = {
        "n": n, "C": C, "k": k, "density": float(torch.count_nonzero(A)) / A.numel(),
        "sparse_products": sparse_used,
        "sklearn_cd": {"time_s": med(r["cd"]["time_s"] for r in rounds), "err": last["cd"]["err"],
                       "iters": last["cd"]["iters"]},
        "sklearn_mu": None if mu is None else {k2: mu[k2] for k2 in ("time_s", "err", "iters")},
        "ours_default": {"time_s": t_ours, "err": last["ours"]["err"], "iters": it_ours,
                         "err_vs_cd": last["ours"]["err"] / last["cd"]["err"] - 1},
        "ours_dense_default": {"time_s": med(r["dense"]["time_s"] for r in rounds),
                               "err": last["dense"]["err"]},
        # the whole call with a 10× looser tolerance: what the default's stopping point costs (see the
        # README: the default tol=1e-4 protects problems whose error crawls along a plateau)
        "ours_loose_tol": {"tol": LOOSE_TOL, "time_s": med(r["loose"]["time_s"] for r in rounds),
                           "err": last["loose"]["err"], "iters": last["loose"]["iters"],
                           "err_vs_cd": last["loose"]["err"] / last["cd"]["err"] - 1},
        "speedup_loose_tol_vs_cd": med(r["cd"]["time_s"] / r["loose"]["time_s"] for r in rounds),
        "ours_to_1pct": {"time_s": med(r["t_to1"] for r in rounds) if ratio_to1 else None,
                         "iters": last["to1"]["iters"], "err": last["to1"]["err"]},
        "speedup_default_vs_cd": med(r["cd"]["time_s"] / r["ours"]["time_s"] for r in rounds),
        "speedup_to_1pct_vs_cd": med(ratio_to1) if ratio_to1 else None,
        # the same two ratios in CPU seconds (one thread each: time lost to other processes on a shared
        # machine does not count); the run to 1 % stops at the first iteration within 1 %, so its CPU time
        # is the time to 1 % plus one final-error evaluation
        "speedup_default_vs_cd_cpu": med(r["cd"]["cpu_s"] / r["ours"]["cpu_s"] for r in rounds),
        "speedup_to_1pct_vs_cd_cpu": med(r["cd"]["cpu_s"] / r["to1"]["cpu_s"] for r in rounds),
        "speedup_sparse_vs_dense": med(r["dense"]["time_s"] / r["ours"]["time_s"] for r in rounds),
        "speedup_default_vs_mu": None if mu is None else mu["time_s"] / t_ours,
        "achieved_gflops": flops_it * it_ours / t_ours / 1e9,
        "matmul_gflops": pt["matmul_gflops"],
        # the floor: the two [n,C]×[C,k] products per outer iteration at torch.matmul's speed
        # (dense), as a share of our run; and the share of the products as our run computes them (CSR
        # when sparse, which beat that floor)
        "floor_fraction": pt["dense_pair_s"] * it_ours / t_ours,
        "products_fraction": min(pair * it_ours / t_ours, 1.0),
        "product_pair_s": {"dense": pt["dense_pair_s"], "sparse": pt["sparse_pair_s"]},
        # the fixed costs in the default run (CSR copies when sparse, NNDSVD init), and the products'
        # share of the rest (the outer iterations)
        "fixed_s": {"csr": oh["csr_s"] if sparse_used else 0.0, "init": oh["init_s"]},
        "loop_products_fraction": min(pair * it_ours / max(t_ours - t_fixed, 1e-9), 1.0),
    }
    row["gflops_fraction"] = row["achieved_gflops"] / row["matmul_gflops"]
    return row


def _is_sparse(A: torch.Tensor) -> bool:
    from conceptlens.decompose.nmf import SPARSE_DENSITY

    return float(torch.count_nonzero(A)) / max(A.numel(), 1) <= SPARSE_DENSITY


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def peak_rss_growth(f: Any) -> tuple[Any, float | None]:
    """Run ``f()`` and measure how far the process' peak resident size rises above its size at the start.

    Linux only: the peak (``VmHWM``) is reset to the current size through ``/proc/self/clear_refs`` first,
    so the growth is this call's own even when an earlier call peaked higher. Elsewhere ``None``.

    Returns
    -------
    (result, growth_mb)
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kb("VmRSS:")
    except (OSError, StopIteration):
        return f(), None
    out = f()
    return out, (_status_kb("VmHWM:") - before) / 1024


def _memory(A: torch.Tensor, k: int) -> dict[str, Any]:
    """Peak memory of one fit each: the growth of the peak resident size (Linux) for both, scikit-learn's
    tracemalloc peak (numpy registers its buffers with it), and our analytic working set."""
    n, C = A.shape

    def sk_traced() -> int:
        tracemalloc.start()
        try:
            _sk(A.numpy(), k, "cd")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    sk_peak, sk_rss = peak_rss_growth(sk_traced)  # one fit for both measures
    ours_rss = peak_rss_growth(lambda: _ours(A, k))[1]
    nnz = int(torch.count_nonzero(A))
    # the data's products and factors: P [k,n], Uᵀ (+ clone) [k,n], R [k,C], W [k,C], CSR copies of A, Aᵀ
    analytic = 4 * (3 * k * n + 3 * k * C) + (2 * nnz * 12 if _is_sparse(A) else 0)
    return {"k": k, "sklearn_cd_tracemalloc_peak_mb": sk_peak / 2**20,
            "sklearn_cd_peak_rss_growth_mb": sk_rss, "ours_peak_rss_growth_mb": ours_rss,
            "ours_analytic_working_set_mb": analytic / 2**20,
            "input_mb": 4 * n * C / 2**20}


_ONLINE_SCRIPT = """
import json, sys, time
import torch
from conceptlens.bench.nmf import peak_rss_growth
from conceptlens.decompose import NMF
from conceptlens.io.store import ActivationStore

torch.set_num_threads(1)
store = ActivationStore(sys.argv[1])
t = time.perf_counter()
m, growth = peak_rss_growth(lambda: NMF(int(sys.argv[2]), batch_size=int(sys.argv[3])).fit(store))
print(json.dumps({"err": m.reconstruction_err_, "passes": m.n_iter_, "time_s": time.perf_counter() - t,
                  "rss_growth_mb": growth}))
"""


def _online(
    A: torch.Tensor, k: int, tiles: tuple[int, ...] = (5, 10), batch: int = 8192,
    batch_err: float | None = None,
) -> dict[str, Any]:
    """Mini-batch NMF streamed from on-disk stores of ``tiles`` copies of ``A`` against batch NMF on ``A``.

    A tiled matrix has the same relative error for tiled factors, so the batch fit on ``A`` is the
    reference (``batch_err``: its error when already measured; otherwise it is fitted here). Each streamed
    fit runs in a fresh process (one thread), its memory measured by :func:`peak_rss_growth`. Two store
    sizes show whether that growth follows the batch or the data.
    """
    import json
    import subprocess
    import sys
    import tempfile

    from conceptlens.decompose import NMF
    from conceptlens.io.store import ActivationStore

    n, C = A.shape
    ref = float(NMF(k).fit(A).reconstruction_err_) if batch_err is None else float(batch_err)
    runs = []
    for t in tiles:
        with tempfile.TemporaryDirectory() as d:
            store = ActivationStore(d)
            for _ in range(t):
                store.append(A)
            out = subprocess.run([sys.executable, "-c", _ONLINE_SCRIPT, d, str(k), str(batch)], check=True,
                                 capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        runs.append({"rows": n * t, "store_mb": n * t * C * 4 / 2**20, "online_err": r["err"],
                     "online_vs_batch": r["err"] / ref - 1, "passes": r["passes"], "time_s": r["time_s"],
                     "rss_growth_mb": r["rss_growth_mb"]})
    return {"k": k, "batch_size": batch, "batch_mb": batch * C * 4 / 2**20, "shard_mb": n * C * 4 / 2**20,
            "batch_err": ref, "runs": runs}


def _encode(A: torch.Tensor, k: int, rows: int, reps: int) -> dict[str, Any]:
    """Encode ``rows`` rows (A tiled) with scikit-learn's bank frozen: ours vs ``transform``.

    One untimed warm-up call of each first (allocator and caches), then ``reps`` interleaved rounds. Also
    times the product ``W Aᵀ`` alone (what any encoder must compute), the floor for ours, and checks both
    encoders' codes against the exact NNLS optimum on a sample of rows (:func:`_nnls_gaps`).
    """
    from conceptlens.decompose import NMF
    from conceptlens.decompose.nmf import cross_product

    reps_tile = -(-rows // A.shape[0])
    T = A.repeat(reps_tile, 1)[:rows].contiguous()
    Tn = T.numpy()
    sk = _sk(A.numpy(), k, "cd")["model"]
    ours = NMF(k)
    ours.components_ = torch.from_numpy(sk.components_).float()
    W = ours.components_

    def product() -> None:
        cross_product(W, T)

    res = []
    for rep in range(reps + 1):
        _settle()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            Us = sk.transform(Tn)
            ts = time.perf_counter() - t
        _settle()
        t = time.perf_counter()
        Uo = ours.encode(T)
        to = time.perf_counter() - t
        t = time.perf_counter()
        product()
        tp = time.perf_counter() - t
        if rep:  # round 0 warms up
            res.append((ts, to, tp))
    return {"rows": rows, "k": k, "sklearn_transform_s": statistics.median(r[0] for r in res),
            "ours_encode_s": statistics.median(r[1] for r in res),
            "product_s": statistics.median(r[2] for r in res),
            "speedup": statistics.median(r[0] / r[1] for r in res),
            "product_share": statistics.median(r[2] / r[1] for r in res),
            "sklearn_err": _rel(Tn, Us, sk.components_), "ours_err": _rel(Tn, Uo.numpy(), sk.components_),
            **_nnls_gaps(Tn, {"sklearn": Us, "ours": Uo.numpy()}, sk.components_)}


def _nnls_gaps(A: np.ndarray, codes: dict[str, np.ndarray], W: np.ndarray, rows: int = 200) -> dict[str, Any]:
    """On ``rows`` evenly spaced rows of ``A [n, C]`` (codes ``[n, k]``, bank ``W [k, C]``): each encoder's
    largest relative excess of ``½‖a − Wᵀu‖²`` over scipy's NNLS optimum, and its supports that differ."""
    from scipy.optimize import nnls

    pick = np.unique(np.linspace(0, A.shape[0] - 1, min(rows, A.shape[0])).astype(int))
    Wd = W.astype(np.float64)
    ref = np.stack([nnls(Wd.T, A[i].astype(np.float64), maxiter=50 * W.shape[0])[0] for i in pick])

    def f(U: np.ndarray) -> np.ndarray:
        return 0.5 * ((A[pick].astype(np.float64) - U.astype(np.float64) @ Wd) ** 2).sum(1)

    f_ref = np.maximum(f(ref), np.finfo(np.float64).tiny)
    out: dict[str, Any] = {"nnls_rows_checked": int(pick.size)}
    for name, U in codes.items():
        out[f"{name}_worst_excess"] = float(((f(U[pick]) - f_ref) / f_ref).max())
        out[f"{name}_wrong_supports"] = int(((U[pick] > 0) != (ref > 0)).any(1).sum())
    return out


def run(quick: bool, out: Path) -> dict[str, Any]:
    """Run the NMF benchmark, print a table of ratios and write ``out/nmf.json``.

    Parameters
    ----------
    quick : bool
        Whole sample photos (637 rows), ``k = 10`` only, fewer encode rows.
    out : Path
        Directory of the JSON result.

    Returns
    -------
    dict
        The payload written (per matrix and ``k``: times, errors, iterations, ratios, GFLOP/s).
    """
    import os

    from threadpoolctl import threadpool_limits

    from conceptlens.bench import write_json

    load_before = os.getloadavg()
    # One thread each: on a shared machine, multi-threaded BLAS/OpenMP timings are dominated by
    # waiting for descheduled threads; single-thread ratios are reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ks = (10,) if quick else (10, 25, 50)
    reps = 3
    try:
        with threadpool_limits(1):
            A = real_activations(quick)
            mats = {"real": A, "planted": None}
            rows: list[dict[str, Any]] = []
            for name in mats:
                for k in ks:
                    M = A if name == "real" else planted_problem(A.shape[0], A.shape[1], k)
                    # the headline row (the target) gets more rounds
                    r = _bench_one(M, k, _HEADLINE_REPS if name == "real" and k == 25 else reps, with_mu=True)
                    r["matrix"] = name
                    rows.append(r)
                    _print_row(r)
            kmem = 10 if quick else 25
            mem = _memory(A, kmem)
            enc = _encode(A, kmem, 20_000 if quick else _ENCODE_ROWS, reps if quick else _HEADLINE_REPS)
            gram = _gram_init_times(A, kmem)
            # the batch reference is the headline row's default fit, already measured
            online = None if quick else _online(A, kmem, batch_err=next(
                r["ours_default"]["err"] for r in rows if r["matrix"] == "real" and r["k"] == kmem))
        # The issue's own setting, "on the same 2 cores": both programs with two threads, for the headline
        # row (k = 25 on the real matrix) and the encode; noisier on a shared machine, so more rounds.
        both: dict[str, Any] | None = None
        if not quick and (os.cpu_count() or 1) >= 2:
            torch.set_num_threads(2)
            with threadpool_limits(2):
                both = {"threads": 2, "fit": _bench_one(A, kmem, _HEADLINE_REPS, with_mu=False),
                        "encode": _encode(A, kmem, _ENCODE_ROWS, _HEADLINE_REPS)}
            both["fit"]["matrix"] = "real"
            print("two threads each:")
            _print_row(both["fit"])
    finally:
        torch.set_num_threads(threads)
    load = {"before": list(load_before), "after": list(os.getloadavg()), "cpus": os.cpu_count()}
    print(f"init (k={kmem}): randomised SVD {gram['randomized_svd_s'] * 1e3:.1f} ms, Gram AᵀA + eigh "
          f"{gram['gram_eigh_s'] * 1e3:.1f} ms")
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']} "
          f"on {load['cpus']} CPUs")
    print(f"memory (k={kmem}): {mem}")
    print(f"encode {enc['rows']} rows k={kmem}: sklearn transform / ours = {enc['speedup']:.1f}×, "
          f"errors sklearn {enc['sklearn_err']:.9f} ours {enc['ours_err']:.9f}; the product W Aᵀ alone is "
          f"{enc['product_share']:.0%} of ours; worst excess over scipy's NNLS objective on "
          f"{enc['nnls_rows_checked']} rows: sklearn {enc['sklearn_worst_excess']:.2g} "
          f"({enc['sklearn_wrong_supports']} supports differ), ours {enc['ours_worst_excess']:.2g} "
          f"({enc['ours_wrong_supports']})")
    if both is not None:
        e2 = both["encode"]
        print(f"encode, two threads each: sklearn transform / ours = {e2['speedup']:.1f}×, errors sklearn "
              f"{e2['sklearn_err']:.9f} ours {e2['ours_err']:.9f}")
    for r in online["runs"] if online is not None else []:
        print(f"online (k={kmem}, store of {r['rows']} rows = {r['store_mb']:.0f} MB, batches of "
              f"{online['batch_size']}): error {r['online_err']:.4f} vs batch {online['batch_err']:.4f} "
              f"({100 * r['online_vs_batch']:+.2f} %), {r['passes']} passes, {r['time_s']:.1f} s, "
              f"peak memory growth {r['rss_growth_mb']:.0f} MB")
    payload = {"quick": quick, "threads_used": 1, "reps": reps, "reps_k25_real": _HEADLINE_REPS, "rows": rows,
               "memory": mem, "encode": enc, "two_threads": both, "online": online,
               "init_alternatives": gram, "load_average": load,
               "notes": "ratios are medians over interleaved rounds in one process; time-to-1% = first outer "
                        "iteration whose error is within 1% of sklearn-cd's final error, init included"}
    print(f"wrote {write_json(out, 'nmf', payload)}")
    return payload


def _print_row(r: dict[str, Any]) -> None:
    def f(v: float | None) -> str:
        return "  -  " if v is None else f"{v:5.1f}"

    if r["k"] == 10 and r["matrix"] == "real" or not hasattr(_print_row, "hdr"):
        _print_row.hdr = True  # type: ignore[attr-defined]
        print(f"{'matrix':<8}{'k':>3}{'cd/ours':>8}{'cd/1e-3':>8}{'(err)':>8}{'cd/1%':>7}{'(cpu)':>7}{'mu/ours':>8}{'sp/dn':>6}"
              f"{'err cd':>8}{'err ours':>9}{'it':>4}{'GF/s':>6}{'mm GF/s':>8}{'floor%':>7}{'prod%':>6}"
              f"{'loop%':>6}{'fixed ms':>9}")
    print(f"{r['matrix']:<8}{r['k']:>3}{f(r['speedup_default_vs_cd']):>8}{f(r['speedup_loose_tol_vs_cd']):>8}"
          f"{100 * r['ours_loose_tol']['err_vs_cd']:>+7.2f}%{f(r['speedup_to_1pct_vs_cd']):>7}"
          f"{f(r['speedup_to_1pct_vs_cd_cpu']):>7}"
          f"{f(r['speedup_default_vs_mu']):>8}{r['speedup_sparse_vs_dense']:>6.2f}{r['sklearn_cd']['err']:>8.4f}"
          f"{r['ours_default']['err']:>9.4f}{r['ours_default']['iters']:>4}{r['achieved_gflops']:>6.1f}"
          f"{r['matmul_gflops']:>8.1f}{100 * r['floor_fraction']:>7.0f}{100 * r['products_fraction']:>6.0f}"
          f"{100 * r['loop_products_fraction']:>6.0f}{1e3 * sum(r['fixed_s'].values()):>9.1f}")
