"""Our NMF / PCA / k-means against scikit-learn on real EfficientNet-Lite0 activations (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptlens.decompose import NMF, PCA, KMeans

sklearn = pytest.importorskip("sklearn.decomposition")


@pytest.mark.parametrize("k", [5, 10])
def test_nmf_matches_sklearn_on_real_activations(photo_acts: torch.Tensor, k: int) -> None:
    A = photo_acts.reshape(-1, photo_acts.shape[-1])
    ours = NMF(n_concepts=k, seed=0).fit(A)
    U = ours.encode(A)
    assert (U >= 0).all() and (ours.components_ >= 0).all()
    err = float(torch.linalg.vector_norm((A - U @ ours.components_).double())
                / torch.linalg.vector_norm(A.double()))
    An = A.double().numpy()
    sk = sklearn.NMF(n_components=k, init="nndsvda", solver="cd", tol=1e-4, max_iter=200, random_state=0)
    Us = sk.fit_transform(An)
    sk_err = float(np.linalg.norm(An - Us @ sk.components_) / np.linalg.norm(An))
    assert err <= 1.02 * sk_err, (err, sk_err)


def test_pca_and_kmeans_on_real_activations(photo_acts: torch.Tensor) -> None:
    from sklearn.cluster import KMeans as SKMeans

    A = photo_acts.reshape(-1, photo_acts.shape[-1])
    p = PCA(n_concepts=8).fit(A)
    sk = sklearn.PCA(n_components=8).fit(A.double().numpy())
    assert np.allclose(p.explained_variance_.double().numpy(), sk.explained_variance_, rtol=1e-3)
    # k-means ends in a local optimum that depends on the seed: compare the mean over seeds
    ours = np.mean([KMeans(n_concepts=6, seed=s).fit(A).inertia_ for s in range(4)])
    theirs = np.mean([SKMeans(n_clusters=6, n_init=3, random_state=s).fit(A.double().numpy()).inertia_
                      for s in range(4)])
    assert ours <= 1.01 * theirs, (ours, theirs)
