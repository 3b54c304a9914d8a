"""Tests of concept edits: ``ConceptExplainer.edit`` / ``edit_activations`` / ``unlearn`` for every method.

Notation as in :mod:`conceptlens.explainer`: ``A [N,h,w,C]`` activations, ``U = encode(A)``, ``D_i`` concept
``i``'s direction (the bank row ``decode`` adds per unit of code), ``c`` the target class, ``w_c`` its row
of the linear head. The tiny model's head is GAP + linear, so for a reconstruction method removing concept
``i`` changes the target logit by exactly ``−mean_hw(U_i) · (D_i · w_c)``: a closed-form oracle.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.decompose.eddp import EDDP, UnlearnedHead, remove_concepts
from conceptlens.errors import ImageError, NotFittedError, ParameterError
from conceptlens.explainer import ConceptEditHead, EditResult
from conceptlens.importance.base import concept_directions
from helpers import TinyNet

K = 3
PARAMS: dict[str, dict[str, object]] = {
    "nmf": {},
    "pca": {},
    "kmeans": {},
    "eddp": {"max_iter": 40, "polish_iter": 10},
    "face": {"max_iter": 20, "encode_kl_steps": 2},
    "craft": {"patch_size": 8},
}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def split() -> cl.ModelSplit:
    return cl.ModelSplit(TinyNet(), "auto")


def _fit(split: cl.ModelSplit, images: torch.Tensor, method: str) -> cl.ConceptExplainer:
    ex = cl.ConceptExplainer(split, method=method, n_concepts=K, seed=0, method_params=PARAMS[method],
                             progress=False)
    return ex.fit(images, target=1)


_CACHE: dict[str, cl.ConceptExplainer] = {}


def _shared(split: cl.ModelSplit, images: torch.Tensor, method: str) -> cl.ConceptExplainer:
    """One fit per method for the whole module (tests that refit use :func:`_fit`)."""
    if method not in _CACHE:
        _CACHE[method] = _fit(split, images, method)
    return _CACHE[method]


@pytest.fixture(scope="module", params=list(PARAMS))
def fitted(request: pytest.FixtureRequest, split: cl.ModelSplit, images: torch.Tensor) -> cl.ConceptExplainer:
    return _shared(split, images, request.param)


@pytest.fixture(scope="module")
def acts(split: cl.ModelSplit, images: torch.Tensor) -> torch.Tensor:
    return split.g(images)


# ------------------------------------------------------------------------------------------------
# every method
# ------------------------------------------------------------------------------------------------
def test_noop_edits_are_the_identity(fitted: cl.ConceptExplainer, images: torch.Tensor,
                                     acts: torch.Tensor) -> None:
    with torch.no_grad():
        base = fitted.split.h(acts)
    for r in (fitted.edit(images), fitted.edit(images, remove=[]), fitted.edit(A=acts, scale={1: 1.0}),
              fitted.edit(A=acts, scale={0: 1, 2: 1.0})):
        assert isinstance(r, EditResult)
        assert r.logits.shape == r.original.shape == (images.shape[0], 4)
        assert torch.equal(r.logits, r.original) and torch.equal(r.original, base)
        assert torch.equal(r.delta_target, torch.zeros(images.shape[0])) and not bool(r.flipped.any())
        assert r.removed == {} and r.target == 1
    assert torch.equal(fitted.edit_activations(acts, scale={2: 1.0}), acts)
    with torch.no_grad():
        assert torch.equal(fitted.unlearn([])(acts), base)


def test_remove_equals_unlearned_head_and_scale_zero(fitted: cl.ConceptExplainer, acts: torch.Tensor) -> None:
    r = fitted.edit(A=acts, remove=[0, 2])
    h2 = fitted.unlearn([0, 2])
    assert isinstance(h2, nn.Module)
    with torch.no_grad():
        torch.testing.assert_close(h2(acts), r.logits, rtol=0, atol=0)
        torch.testing.assert_close(fitted.split.h(h2.edit(acts)), r.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fitted.edit_activations(acts, [0, 2]), h2.edit(acts), rtol=0, atol=0)
    # scale 0 ≡ remove; an int is one concept; the delta is the target column of the logit change
    torch.testing.assert_close(fitted.edit(A=acts, scale={0: 0.0, 2: 0}).logits, r.logits)
    torch.testing.assert_close(fitted.edit(A=acts, remove=1).logits, fitted.edit(A=acts, remove=[1]).logits)
    torch.testing.assert_close(r.delta_target, r.delta[:, 1])
    assert r.removed == {0: 1.0, 2: 1.0}
    assert torch.equal(r.flipped, r.logits.argmax(1) != r.original.argmax(1))
    # the edit does change something (the concepts are used by the head)
    assert float(r.delta.abs().max()) > 1e-4


def test_bad_indices_and_scales(fitted: cl.ConceptExplainer, acts: torch.Tensor) -> None:
    for bad in ([K], [-1], [0, 7], 3.0, [True], "0"):
        with pytest.raises(ParameterError, match=r"0–2|concept index|list"):
            fitted.edit(A=acts, remove=bad)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="out of range.*0–2"):
        fitted.edit(A=acts, scale={K: 0.5})
    with pytest.raises(ParameterError, match="out of range"):
        fitted.unlearn(K)
    with pytest.raises(ParameterError, match="finite"):
        fitted.edit(A=acts, scale={0: math.nan})
    with pytest.raises(ParameterError, match="both"):
        fitted.edit(A=acts, remove=[0], scale={0: 2.0})
    with pytest.raises(ParameterError, match="dict"):
        fitted.edit(A=acts, scale=[0.5])  # type: ignore[arg-type]
    with pytest.raises(ImageError):
        fitted.edit(remove=[0])


def test_unfitted_explainer(split: cl.ModelSplit, acts: torch.Tensor) -> None:
    ex = cl.ConceptExplainer(split, method="nmf", n_concepts=K)
    for call in (lambda: ex.edit(A=acts, remove=[0]), lambda: ex.unlearn(0),
                 lambda: ex.edit_activations(acts, [0])):
        with pytest.raises(NotFittedError, match="fit"):
            call()


# ------------------------------------------------------------------------------------------------
# reconstruction methods: closed forms
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["nmf", "pca", "kmeans"])
def test_linear_head_oracle_and_scaling(split: cl.ModelSplit, images: torch.Tensor, acts: torch.Tensor,
                                        method: str) -> None:
    ex = _shared(split, images, method)
    d = ex.decomposition_
    U = d.encode(acts)
    D, _ = concept_directions(d)
    wc = split.model.fc.weight[1].detach()
    for i in range(K):
        expect = -U[..., i].mean((1, 2)) * float(D[i] @ wc)
        r = ex.edit(A=acts, remove=[i])
        torch.testing.assert_close(r.delta_target, expect, rtol=1e-4, atol=1e-5)
        # the edited activations differ by exactly the concept's part of the reconstruction
        torch.testing.assert_close(acts - ex.edit_activations(acts, [i]), U[..., i, None] * D[i],
                                   rtol=1e-5, atol=1e-6)
        # linear in the factor: keeping s times the concept moves the logit by (s − 1) · (its part)
        for s in (0.5, 2.0, -1.0):
            torch.testing.assert_close(ex.edit(A=acts, scale={i: s}).delta_target, (1 - s) * expect,
                                       rtol=1e-4, atol=1e-5)


def test_nmf_removing_every_concept_leaves_the_residual(split: cl.ModelSplit, images: torch.Tensor,
                                                        acts: torch.Tensor) -> None:
    ex = _shared(split, images, "nmf")
    d = ex.decomposition_
    r = ex.edit(A=acts, remove=list(range(K)))
    residual = acts - d.decode(d.encode(acts))
    with torch.no_grad():
        torch.testing.assert_close(r.logits, split.h(residual), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ex.edit_activations(acts, list(range(K))), residual, rtol=1e-5, atol=1e-6)
    # the NMF residual can be negative: no clamp (a clamp would break this invariant)
    assert float(residual.min()) < 0


def test_unlearn_ignores_the_concept_only_where_it_is(split: cl.ModelSplit, images: torch.Tensor,
                                                     acts: torch.Tensor) -> None:
    """Activations built from the other concepts give the original logits; adding concept i is undone."""
    ex = _fit(split, images, "nmf")
    W = ex.concepts_
    g = torch.Generator().manual_seed(3)
    U = torch.rand(5, 8, 8, K, generator=g) * (torch.rand(5, 8, 8, K, generator=g) < 0.6)
    i = 1
    U[..., i] = 0
    without = U @ W
    with_ = without + 2.0 * torch.rand(5, 8, 8, 1, generator=g) * W[i]
    h2 = ex.unlearn(i)
    assert isinstance(h2, ConceptEditHead)
    with torch.no_grad():
        base = split.h(without)
        assert float((h2(without) - base).abs().max()) < 1e-3 * float(base.abs().max())
        assert torch.equal(h2(without).argmax(1), base.argmax(1))
        # with the concept added, the unlearned head sees (almost) the activations without it
        torch.testing.assert_close(h2(with_), base, rtol=1e-3, atol=1e-3 * float(base.abs().max()))
        assert float((split.h(with_) - base).abs().max()) > 0.05 * float(base.abs().max())
    # the head keeps the bank it was made with: a refit of the explainer does not change it
    before = h2(with_)
    ex.fit(images[:6], target=1)
    torch.testing.assert_close(h2(with_), before, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# EDDP: the paper's edit
# ------------------------------------------------------------------------------------------------
def test_eddp_edit_is_remove_concepts(split: cl.ModelSplit, images: torch.Tensor, acts: torch.Tensor) -> None:
    ex = _shared(split, images, "eddp")
    d = ex.decomposition_
    assert isinstance(d, EDDP)
    h2 = ex.unlearn([2, 0])
    assert isinstance(h2, UnlearnedHead)
    with torch.no_grad():
        removed = split.h(remove_concepts(acts, d, [0, 2]))
        torch.testing.assert_close(ex.edit(A=acts, remove=[0, 2]).logits, removed)
        # scale s keeps s times the component: EDDP's factor is 1 − s (scale 2 adds the concept once more)
        torch.testing.assert_close(ex.edit(A=acts, scale={1: 2.0}).logits,
                                   split.h(remove_concepts(acts, d, [], scale={1: -1.0})))
        torch.testing.assert_close(h2(acts), removed, rtol=0, atol=0)
    # post-ReLU layer: the edit keeps the activations non-negative
    assert float(ex.edit_activations(acts, scale={0: -3.0}).min()) >= 0


def test_edit_survives_save_and_load(split: cl.ModelSplit, images: torch.Tensor, acts: torch.Tensor,
                                     tmp_path: object) -> None:
    from pathlib import Path

    for method in ("eddp", "nmf"):
        ex = _shared(split, images, method)
        p = ex.save(Path(str(tmp_path)) / f"{method}.cl")
        ex2 = cl.ConceptExplainer.load(p, split=split)
        torch.testing.assert_close(ex2.edit(A=acts, remove=[1]).logits, ex.edit(A=acts, remove=[1]).logits)


# ------------------------------------------------------------------------------------------------
# the ground-truth world
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["eddp", "nmf"])
def test_ground_truth_key_concepts_matter_more_than_distractors(method: str) -> None:
    """Concepts matched (Hungarian, on IoU with the true masks) to a class's key concepts lower its logit
    when removed, more than those matched to distractors; unlearning a key concept leaves other classes'
    images that lack it (nearly) unchanged."""
    from conceptlens import world as synthetic
    from conceptlens.world import leaderboard as gt

    model = synthetic.trained_model(seed=0)
    world = synthetic.ConceptWorld(**model.world_config)
    split = cl.ModelSplit(model, "auto")
    classes = [0, 2]  # disc+red, triangle+checks
    data = gt.class_images(world, 64, classes, seed=0)
    xo, _, mo, _ = world.sample(300, seed=123)
    Ao = split.g(xo, progress=False)
    present_o = mo.flatten(2).any(-1)  # [n, K]
    with torch.no_grad():
        base_o = split.h(Ao)
    params = {"max_iter": 400, "polish_iter": 50} if method == "eddp" else {}
    for c in classes:
        x, masks = data[c]
        A = split.g(x, progress=False)
        ex = cl.ConceptExplainer(split, method=method, n_concepts=10, seed=0, method_params=params,
                                 progress=False).fit(x, c, A=A)
        r = gt.score_class(ex.explain(x, A=A).maps, masks, ex.importance_, world.relevance[c])
        key_d, dis_d = [], []
        for concept, j in enumerate(r["match"]):
            if j < 0:
                continue
            delta = float(ex.edit(A=A, remove=[j]).delta_target.mean())
            (key_d if world.relevance[c, concept] > 0 else dis_d).append(delta)
            if world.relevance[c, concept] > 0:
                absent = ~present_o[:, concept]
                with torch.no_grad():
                    after = ex.unlearn(j)(Ao[absent])
                agree = float((after.argmax(1) == base_o[absent].argmax(1)).float().mean())
                assert agree >= 0.9, (world.class_names[c], world.concept_names[concept], agree)
        assert len(key_d) == 2 and dis_d, r["match"]
        key, dis = sum(key_d) / len(key_d), sum(dis_d) / len(dis_d)
        assert key < 0, (world.class_names[c], key_d)
        assert key < dis, (world.class_names[c], key_d, dis_d)
