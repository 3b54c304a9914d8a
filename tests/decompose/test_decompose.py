"""Tests of the concept extractors (NMF, PCA, k-means) against scikit-learn/scipy oracles and invariants."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, nnls
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition import PCA as SkPCA

from conceptlens.decompose import NMF, PCA, Decomposition, KMeans, available, get
from conceptlens.decompose.nmf import SOLVERS, hals, mu
from conceptlens.errors import ActivationError, NotFittedError, ParameterError

METHODS = [NMF, PCA, KMeans]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def random_data(n: int = 2000, C: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, C)).astype(np.float32)


def relu_data(n: int = 2000, C: int = 256, seed: int = 0) -> np.ndarray:
    """ReLU-like activations: low-rank structure plus noise, thresholded so that ~90 % are zero."""
    g = np.random.default_rng(seed)
    Z = 0.3 * g.standard_normal((n, 30)) @ g.standard_normal((30, C)) + g.standard_normal((n, C))
    return np.maximum(Z - np.quantile(Z, 0.9), 0).astype(np.float32)


def planted(n: int = 1500, C: int = 96, k: int = 6, noise: float = 0.01, seed: int = 0):
    """A = U* W* + noise with sparse, non-negative, well separated factors."""
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, k, generator=g) ** 3
    W = torch.rand(k, C, generator=g) * (torch.rand(k, C, generator=g) < 0.3)
    A = U @ W
    A = A + noise * A.std() * torch.rand(n, C, generator=g)
    return A, U, W


def rel_err(A: torch.Tensor, U: torch.Tensor, W: torch.Tensor) -> float:
    A, U, W = A.double(), U.double(), W.double()
    return float(torch.linalg.vector_norm(A - U @ W) / torch.linalg.vector_norm(A))


def sk_nmf_err(A: np.ndarray, k: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when it hits max_iter
        m = SkNMF(n_components=k, init="nndsvda", solver="cd", tol=1e-4, max_iter=200, random_state=0)
        U = m.fit_transform(A)
    A64 = A.astype(np.float64)
    return float(np.linalg.norm(A64 - U.astype(np.float64) @ m.components_) / np.linalg.norm(A64))


# ---------------------------------------------------------------------------------------------
# NMF
# ---------------------------------------------------------------------------------------------
def test_nmf_codes_and_bank_nonnegative():
    A = torch.from_numpy(relu_data(500, 64))
    m = NMF(8)
    U = m.fit_encode(A)
    assert (m.components_ >= 0).all() and (U >= 0).all()
    assert (m.encode(A) >= 0).all()
    assert torch.isfinite(m.components_).all()
    # the bank's rows are normalised; the scale lives in the codes
    torch.testing.assert_close(m.components_.norm(dim=1), torch.ones(8))


@pytest.mark.parametrize(
    "kind,k", [("random", 10), ("relu", 10), ("relu", 25), ("random", 25)], ids=lambda v: str(v)
)
def test_nmf_error_within_2pct_of_sklearn_cd(kind, k):
    A = random_data() if kind == "random" else relu_data()
    ref = sk_nmf_err(A, k)
    m = NMF(k, seed=0).fit(torch.from_numpy(A))
    assert m.reconstruction_err_ <= 1.02 * ref
    # the cheap Gram-product estimate agrees with the exact error
    assert m.history_[-1] == pytest.approx(m.reconstruction_err_, rel=1e-3)


def test_nmf_reported_error_is_the_real_error_and_history_decreases():
    A = torch.from_numpy(relu_data(800, 128, seed=3))
    m = NMF(12)
    U = m.fit_encode(A)
    assert m.reconstruction_err_ == pytest.approx(rel_err(A, U, m.components_), rel=1e-5)
    assert m.n_iter_ == len(m.history_) >= 2
    h = np.array(m.history_)
    assert np.all(np.diff(h) <= 1e-5 * h[:-1])  # HALS is a descent method
    assert 0 < m.reconstruction_err_ < 1


def test_nmf_recovers_planted_factors():
    A, _, W_true = planted()
    m = NMF(6, seed=0).fit(A)
    a = torch.nn.functional.normalize(m.components_, dim=1)
    b = torch.nn.functional.normalize(W_true, dim=1)
    cos = (a @ b.T).numpy()
    r, c = linear_sum_assignment(-cos)
    assert cos[r, c].min() >= 0.99
    assert m.reconstruction_err_ < 0.02


def test_nmf_encode_matches_fit_and_beats_clamped_pinv():
    A = torch.from_numpy(relu_data(1000, 128, seed=1))
    m = NMF(10)
    U_fit = m.fit_encode(A)
    U = m.encode(A)
    W = m.components_
    assert (U >= 0).all()
    assert float((U - U_fit).norm() / U_fit.norm()) < 0.1
    U_pinv = (A @ torch.linalg.pinv(W)).clamp_min(0)
    assert rel_err(A, U, W) <= rel_err(A, U_pinv, W)
    # encoding solves the NNLS sub-problem, so it can only improve on the fitted codes
    assert rel_err(A, U, W) <= rel_err(A, U_fit, W) * (1 + 1e-6)


def test_nmf_encode_is_exact_nnls():
    A = torch.from_numpy(relu_data(300, 64, seed=2))
    m = NMF(7).fit(A)
    U = m.encode(A[:25]).double().numpy()
    W = m.components_.double().numpy()
    for i in range(25):
        u_ref, _ = nnls(W.T, A[i].double().numpy())
        np.testing.assert_allclose(U[i], u_ref, atol=1e-4 * max(1.0, np.abs(u_ref).max()))


def test_nmf_all_zero_input_gives_zero_codes():
    Z = torch.zeros(40, 16)
    with pytest.warns(RuntimeWarning, match="all-zero"):
        m = NMF(4).fit(Z)
    U = m.encode(Z)
    assert torch.equal(U, torch.zeros(40, 4))
    assert m.reconstruction_err_ == 0.0 and not torch.isnan(m.components_).any()
    # zero rows under a real bank also encode to exactly zero
    m2 = NMF(4).fit(torch.rand(100, 16))
    U2 = m2.encode(Z)
    assert torch.equal(U2, torch.zeros(40, 4))


def test_nmf_rank_deficient_and_tiny_inputs_stay_finite():
    A = torch.zeros(50, 20)
    A[:, 3] = torch.rand(50)  # rank one, with 19 dead channels
    m = NMF(5).fit(A)
    assert torch.isfinite(m.components_).all() and m.reconstruction_err_ < 1e-4
    one = NMF(3).fit(torch.rand(1, 8))  # a single row
    assert torch.isfinite(one.encode(torch.rand(2, 8))).all()


def test_nmf_negative_input_raises_with_minimum_and_layer():
    A = torch.rand(30, 8)
    A[4, 2] = -0.75
    with pytest.raises(ActivationError, match="-0.75") as exc:
        NMF(3).fit(A, layer_name="features.7")
    msg = str(exc.value)
    assert "features.7" in msg and "non-negative" in msg and "pca" in msg
    assert "ReLU" in msg


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("k", [0, -1, 17, 2.5])
def test_bad_n_concepts_raises(cls, k):
    with pytest.raises(ParameterError):
        cls(k).fit(torch.rand(50, 16))


@pytest.mark.parametrize(
    "kwargs",
    [{"tol": -1.0}, {"max_iter": 0}, {"init": "svd"}, {"solver": "cd"}, {"inner_sweeps": 0}],
)
def test_nmf_bad_parameters_raise(kwargs):
    with pytest.raises(ParameterError):
        NMF(3, **kwargs).fit(torch.rand(20, 8))


def test_nmf_same_seed_same_bank_and_seed_matters_for_random_init():
    A = torch.from_numpy(relu_data(400, 64))
    a = NMF(6, seed=3).fit(A).components_
    b = NMF(6, seed=3).fit(A).components_
    assert torch.equal(a, b)
    r1 = NMF(6, seed=1, init="random").fit(A).components_
    r2 = NMF(6, seed=1, init="random").fit(A).components_
    r3 = NMF(6, seed=2, init="random").fit(A).components_
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda", "nndsvdar", "random"])
def test_nmf_every_init_converges(init):
    A, _, _ = planted(400, 48, 5, seed=4)
    m = NMF(5, init=init, max_iter=400).fit(A)
    assert m.reconstruction_err_ < 0.05


def test_nmf_mu_solver_is_a_valid_alternative():
    A = torch.from_numpy(relu_data(600, 64))
    e_hals = NMF(6).fit(A).reconstruction_err_
    m = NMF(6, solver="mu", max_iter=300, tol=1e-6).fit(A)
    assert m.reconstruction_err_ <= 1.05 * e_hals
    assert (m.encode(A) >= 0).all()


def test_solvers_share_one_signature_and_decrease_the_objective():
    g = torch.Generator().manual_seed(0)
    W = torch.rand(5, 30, generator=g)
    A = torch.rand(40, 30, generator=g)
    P, Q = W @ A.T, W @ W.T
    X0 = torch.rand(5, 40, generator=g)

    def obj(X):
        return float(0.5 * (X * (Q @ X)).sum() - (P * X).sum())

    assert set(SOLVERS) == {"hals", "mu"}
    for solver in (hals, mu):
        X = solver(P, Q, X0, 5, floor=0.0, delta=0.0)
        assert X.shape == X0.shape and (X >= 0).all()
        assert obj(X) < obj(X0)
        assert torch.equal(X0, X0.clone())  # input untouched (pure function)
    # one HALS row update is the exact minimiser over that row
    X = hals(P, Q, X0, 200)
    grad = Q @ X - P
    assert float(grad[X > 1e-6].abs().max()) < 1e-3 and float(grad[X <= 1e-6].min()) > -1e-3


def test_nmf_progress_and_verbose_do_not_change_the_result(capsys):
    A = torch.from_numpy(relu_data(300, 32))
    a = NMF(4).fit(A).components_
    b = NMF(4, progress=True, verbose=True).fit(A).components_
    assert torch.equal(a, b)
    assert "relative error" in capsys.readouterr().out


def test_nmf_float64_input_is_fitted_in_float64():
    A = torch.from_numpy(relu_data(300, 32)).double()
    m = NMF(4).fit(A)
    assert m.components_.dtype == torch.float64 and m.encode(A).dtype == torch.float64


def test_nmf_get_params_roundtrip():
    m = NMF(7, tol=1e-5, init="nndsvd", inner_sweeps=3)
    p = m.get_params()
    assert p["n_concepts"] == 7 and p["tol"] == 1e-5 and p["init"] == "nndsvd" and p["inner_sweeps"] == 3
    assert NMF(**p).get_params() == p


# ---------------------------------------------------------------------------------------------
# shared protocol
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_encode_before_fit_raises(cls):
    with pytest.raises(NotFittedError, match="fit"):
        cls(3).encode(torch.rand(5, 8))
    with pytest.raises(NotFittedError):
        cls(3).decode(torch.rand(5, 3))


@pytest.mark.parametrize("cls", METHODS)
def test_spatial_input_gives_spatial_codes(cls):
    A = torch.rand(6, 4, 5, 12)
    d = cls(3).fit(A)
    U = d.encode(A)
    assert U.shape == (6, 4, 5, 3)
    assert d.decode(U).shape == A.shape
    # rows are independent: encoding the flattened rows gives the same codes
    torch.testing.assert_close(U.reshape(-1, 3), d.encode(A.reshape(-1, 12)))


@pytest.mark.parametrize("cls", METHODS)
def test_wrong_channel_count_at_encode_raises(cls):
    d = cls(3).fit(torch.rand(30, 8))
    with pytest.raises(ActivationError, match="channels"):
        d.encode(torch.rand(4, 9))


@pytest.mark.parametrize("cls", METHODS)
def test_nan_input_raises(cls):
    A = torch.rand(20, 8)
    A[3, 3] = float("nan")
    with pytest.raises(ActivationError, match="NaN"):
        cls(3).fit(A)


def test_registry():
    assert get("nmf") is NMF and get("pca") is PCA and get("kmeans") is KMeans
    assert get("NMF") is NMF
    assert {"nmf", "pca", "kmeans"} <= set(available())
    assert issubclass(get("nmf"), Decomposition) and NMF.nonnegative and not PCA.nonnegative
    with pytest.raises(ParameterError, match="nmf"):
        get("nfm")


@pytest.mark.parametrize("cls", METHODS)
def test_state_tensors_roundtrip(cls):
    A = torch.rand(60, 10)
    d = cls(4).fit(A)
    st = d.state_tensors()
    fresh = cls(4)
    fresh.load_state_tensors({k: v.clone() for k, v in st.items()})
    torch.testing.assert_close(fresh.encode(A), d.encode(A))


# ---------------------------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(300, 20), (15, 40)], ids=["tall", "wide"])
def test_pca_full_rank_reconstructs_exactly(shape):
    A = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 1
    C = shape[1]
    d = PCA(C).fit(A)  # the wide case needs the basis completed beyond the data's rank
    torch.testing.assert_close(d.decode(d.encode(A)), A, atol=1e-5, rtol=1e-5)
    W = d.components_
    torch.testing.assert_close(W @ W.T, torch.eye(C), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2000, 64), (40, 100)], ids=["tall", "wide"])
def test_pca_matches_sklearn(shape):
    A = np.random.default_rng(1).standard_normal(shape).astype(np.float32) @ np.diag(
        np.linspace(3, 0.1, shape[1])
    ).astype(np.float32)
    k = 8
    ref = SkPCA(n_components=k).fit(A)
    d = PCA(k).fit(torch.from_numpy(A))
    np.testing.assert_allclose(d.explained_variance_.numpy(), ref.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(d.explained_variance_ratio_.numpy(), ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(d.mean_.numpy(), ref.mean_, atol=1e-5)
    cos = np.abs((d.components_.numpy() * ref.components_).sum(1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-3)


def test_pca_sign_convention_and_state():
    A = torch.rand(200, 12)
    d = PCA(5).fit(A)
    W = d.components_
    assert (W.gather(1, W.abs().argmax(dim=1, keepdim=True)) > 0).all()
    # flipping the data's sign does not flip the components' convention
    d2 = PCA(5).fit(-A)
    assert (d2.components_.gather(1, d2.components_.abs().argmax(1, keepdim=True)) > 0).all()
    assert "mean_" in d.state_tensors()
    torch.testing.assert_close(d.encode(A).mean(0), torch.zeros(5), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["blobs", "random"])
@pytest.mark.parametrize("k", [5, 12])
def test_kmeans_inertia_within_1pct_of_sklearn(kind, k):
    if kind == "blobs":
        X, _ = make_blobs(2000, 16, centers=k, random_state=0)
    else:
        X = np.random.default_rng(0).random((2000, 16))
    X = X.astype(np.float32)
    ref = SkKMeans(k, n_init=3, random_state=0).fit(X).inertia_
    d = KMeans(k, n_init=3, seed=0).fit(torch.from_numpy(X))
    assert d.inertia_ <= 1.01 * ref
    # inertia_ is the real sum of squared distances to the nearest centroid
    Xt = torch.from_numpy(X).double()
    real = float(torch.cdist(Xt, d.components_.double()).min(1).values.square().sum())
    assert d.inertia_ == pytest.approx(real, rel=1e-4)


def test_kmeans_one_hot_codes_decode_to_nearest_centroid():
    A = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) + 100.0  # far from the origin
    d = KMeans(6).fit(A)
    U = d.encode(A)
    assert set(U.unique().tolist()) <= {0.0, 1.0} and torch.equal(U.sum(1), torch.ones(500))
    nearest = torch.cdist(A.double(), d.components_.double()).argmin(1)
    assert torch.equal(U.argmax(1), nearest)
    torch.testing.assert_close(d.decode(U), d.components_[nearest])


def test_kmeans_blobs_found_exactly():
    X, y = make_blobs(600, 5, centers=4, cluster_std=0.2, random_state=3)
    d = KMeans(4).fit(torch.from_numpy(X.astype(np.float32)))
    labels = d.encode(torch.from_numpy(X.astype(np.float32))).argmax(1).numpy()
    # each true blob maps to exactly one cluster
    assert all(len(set(labels[y == c])) == 1 for c in range(4)) and len(set(labels)) == 4


def test_kmeans_few_distinct_points_no_nan_and_deterministic():
    A = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]).repeat(20, 1)
    d = KMeans(2, n_init=2).fit(A)
    assert torch.isfinite(d.components_).all()
    d5 = KMeans(2).fit(A)
    assert torch.equal(d5.components_, KMeans(2).fit(A).components_)
    with pytest.raises(ActivationError, match="rows"):
        KMeans(2).fit(torch.rand(1, 4))


def test_kmeans_empty_cluster_is_reseeded():
    # three distinct points and k = 2 after a bad start: Lloyd must not leave a NaN centroid
    d = KMeans(2, n_init=1, max_iter=50)
    X = torch.tensor([[0.0], [0.0], [10.0]])
    centres, inertia, _ = d._lloyd(X, X.square().sum(1), torch.tensor([[0.0], [-50.0]]), 0.0)
    assert torch.isfinite(centres).all() and inertia == pytest.approx(0.0)
