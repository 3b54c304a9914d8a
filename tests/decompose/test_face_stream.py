"""FACE out of core: the mini-batch fit gives the same bank from a tensor and from a store, reads the store
batch by batch, never lets its objective rise, and its KL term is the analytic value (scipy as oracle).

Data: FACE's toy world (:mod:`face_world`: 48 images of 3 × 3 × 12 activations, a GAP + MLP head that reads
the low-energy parts NMF drops) and a linear GAP head whose KL and gradient have closed forms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

import conceptlens as cl
from conceptlens.decompose.face import FACE, KLTerm, face_objective
from conceptlens.errors import ActivationError, ParameterError
from face_world import C, K, S, make_world
from helpers import TinyNet
from store_probe import store_of

pytestmark = pytest.mark.usefixtures("one_thread_module")

BATCH = 90  # rows: 10 images of 3 × 3 per batch (48 images: 5 batches, the last of 8)


class LinearGap(torch.nn.Module):
    """``h(A) = mean_{h,w}(A) Vᵀ + c``: ``∂KL_i/∂Â_{i,s} = (q_i − p_i) V / |S|`` in closed form."""

    def __init__(self, seed: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.V = torch.randn(K, C, generator=g, dtype=torch.float64) * 2
        self.c = torch.randn(K, generator=g, dtype=torch.float64)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.mean((1, 2)) @ self.V.to(a.dtype).T + self.c.to(a.dtype)


def _kl_numpy(A: np.ndarray, A_hat: np.ndarray, V: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per-image ``KL(softmax h(A_i) ‖ softmax h(Â_i))`` by scipy."""
    p = softmax(A.mean((1, 2)) @ V.T + c, axis=1)
    q = softmax(A_hat.mean((1, 2)) @ V.T + c, axis=1)
    return np.array([entropy(pi, qi) for pi, qi in zip(p, q, strict=True)])


def test_a_store_gives_the_tensor_bank_reading_one_batch_at_a_time(face_toy, tmp_path: Path) -> None:
    A, head = face_toy
    ref = FACE(3, kl_weight=0.05, head=head, seed=0, batch_size=BATCH).fit(A)
    # shards of 7 images: the batches of 10 images cross shard boundaries
    store = store_of(A, str(tmp_path / "acts"), 7)
    with torch.no_grad():
        logits = head(A)
    got = FACE(3, kl_weight=0.05, head=head, seed=0, batch_size=BATCH).fit(store, image_shape=(S, S),
                                                                           logits=logits)
    torch.testing.assert_close(got.components_, ref.components_, atol=1e-6, rtol=1e-5)
    assert [h["total"] for h in got.history_] == pytest.approx([h["total"] for h in ref.history_], rel=1e-6)
    assert got.n_iter_ == ref.n_iter_ >= 3
    # every read was a pass in whole-image batches of at most BATCH rows (never the whole store)
    assert store.reads and all(r[0] == "batches" and r[1] <= BATCH for r in store.reads)
    assert store.largest == BATCH and sum(r == ("batches", BATCH) for r in store.reads) >= got.n_iter_
    # without the logits the head computes them from each batch: the same p, so the same bank
    plain = FACE(3, kl_weight=0.05, head=head, seed=0, batch_size=BATCH).fit(store, image_shape=(S, S))
    torch.testing.assert_close(plain.components_, ref.components_, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lam", [0.05, 0.5])
def test_the_objective_never_rises_and_the_kl_falls(face_toy, lam: float) -> None:
    A, head = face_toy
    d = FACE(3, kl_weight=lam, head=head, seed=0, batch_size=BATCH).fit(A)
    totals = [h["total"] for h in d.history_]
    assert all(b <= a for a, b in zip(totals, totals[1:], strict=False)), totals
    assert totals[-1] < totals[0]
    # the bank and the codes move towards the model's predictions: the KL ends well below the start's
    assert d.history_[-1]["kl"] < 0.5 * d.history_[0]["kl"]
    # and the mini-batch fit is not worse than the in-memory solver on the same objective (+0.5 %)
    mem = FACE(3, kl_weight=lam, head=head, seed=0).fit(A)
    assert d.objective_["total"] <= 1.005 * mem.objective_["total"]


def test_kl_term_from_logits_is_the_analytic_value() -> None:
    A, _ = make_world(dtype=torch.float64)
    head = LinearGap()
    A_hat = A.flip(0) * 0.7 + 0.1  # any other activations of the same shape
    with torch.no_grad():
        logits = head(A)
    term = KLTerm.from_logits(head, logits, tuple(A.shape), batch_images=7)
    kl, grad = term.value_and_grad(A_hat)
    V, c = head.V.numpy(), head.c.numpy()
    np.testing.assert_allclose(kl.numpy(), _kl_numpy(A.numpy(), A_hat.numpy(), V, c), rtol=1e-10, atol=1e-14)
    p = softmax(A.numpy().mean((1, 2)) @ V.T + c, axis=1)
    q = softmax(A_hat.numpy().mean((1, 2)) @ V.T + c, axis=1)
    want = np.broadcast_to(((q - p) @ V / (S * S))[:, None, None, :], A.shape)
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-9, atol=1e-14)
    # the same term as from the activations themselves
    torch.testing.assert_close(KLTerm(head, A, 5).value(A_hat), kl)


def test_fitted_objective_is_the_scipy_value_of_the_fitted_codes() -> None:
    A, _ = make_world(dtype=torch.float64)
    head = LinearGap()
    d = FACE(3, kl_weight=0.3, head=head, seed=0, batch_size=BATCH)
    U = d.fit_encode(A)
    assert U.shape == (*A.shape[:-1], 3) and bool((U >= 0).all())
    A_hat = (U @ d.components_).numpy()
    mse = float(((A.numpy() - A_hat) ** 2).mean())
    kl = float(_kl_numpy(A.numpy(), A_hat, head.V.numpy(), head.c.numpy()).mean())
    assert d.objective_["mse"] == pytest.approx(mse, rel=1e-9)
    assert d.objective_["kl"] == pytest.approx(kl, rel=1e-6, abs=1e-15)
    assert d.objective_["total"] == pytest.approx(mse + 0.3 * kl, rel=1e-9)
    assert face_objective(A, U, d.components_, head, 0.3)["total"] == pytest.approx(d.objective_["total"])


def test_restarting_codes_also_descends_and_reads_only_batches(face_toy, tmp_path: Path) -> None:
    A, head = face_toy
    store = store_of(A, str(tmp_path / "acts"), 16)
    d = FACE(3, kl_weight=0.5, head=head, seed=0, batch_size=BATCH, warm_codes=False, code_steps=3)
    d.fit(store, image_shape=(S, S))
    totals = [h["total"] for h in d.history_]
    assert all(b <= a for a, b in zip(totals, totals[1:], strict=False)) and totals[-1] < totals[0]
    assert store.largest == BATCH
    ref = FACE(3, kl_weight=0.5, head=head, seed=0, batch_size=BATCH, warm_codes=False, code_steps=3).fit(A)
    torch.testing.assert_close(d.components_, ref.components_, atol=1e-6, rtol=1e-5)


def test_mini_batch_input_errors(face_toy, tmp_path: Path) -> None:
    A, head = face_toy
    store = store_of(A, str(tmp_path / "acts"), 16)
    with pytest.raises(ParameterError, match="solver='hals'"):
        FACE(3, head=head, solver="adam", batch_size=BATCH).fit(A)
    with pytest.raises(ParameterError, match="batch_size"):
        FACE(3, head=head, batch_size=0).fit(A)
    with pytest.raises(ParameterError, match="fit_encode needs the activations in memory"):
        FACE(3, head=head).fit_encode(store)  # type: ignore[arg-type]
    with pytest.raises(ActivationError, match="one row per image"):
        FACE(3, head=head).fit(store, image_shape=(S, S), logits=torch.zeros(5, K))
    with pytest.raises(ActivationError, match="not whole images"):
        FACE(3, head=head).fit(store, image_shape=(5, 5))


METHOD_PARAMS = {"batch_size": 640, "max_iter": 8}  # 10 of TinyNet's 8 × 8 images per batch


def test_the_explainer_gives_the_same_numbers_in_memory_and_on_disk(tmp_path: Path) -> None:
    split = cl.ModelSplit(TinyNet(), "auto")
    x = torch.rand(120, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 4 - 2
    plain = cl.ConceptExplainer(split, "face", 4, seed=0, method_params=METHOD_PARAMS).fit(x, 2)
    mem = cl.ConceptExplainer(split, "face", 4, seed=0, method_params=METHOD_PARAMS).fit(
        x, 2, memory_budget="1GB")
    disk = cl.ConceptExplainer(split, "face", 4, seed=0, method_params=METHOD_PARAMS).fit(
        x, 2, memory_budget=0, store_dir=tmp_path / "acts", batch_size=16)
    assert (tmp_path / "acts" / "index.json").exists() and disk.stream_["on_disk"]
    assert not mem.stream_["on_disk"]
    assert plain.concepts_.abs().sum() > 0
    for got in (mem, disk):
        for f in ("concepts_", "importance_", "weights_", "fit_scores_"):
            torch.testing.assert_close(getattr(got, f), getattr(plain, f), atol=1e-5, rtol=1e-5)
    # without batch_size the store still fits (8192 rows per batch), where it used to refuse
    small = cl.ConceptExplainer(split, "face", 3, seed=0, method_params={"max_iter": 3})
    small.fit(x[:10], 0, memory_budget=0)
    assert small.stream_["on_disk"] and small.concepts_.shape == (3, 16)
