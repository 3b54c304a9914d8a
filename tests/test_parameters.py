"""Bad parameters and mismatched inputs get a ConceptLensError that says what to do (#23)."""

from __future__ import annotations

import pytest
import torch

import conceptlens as cl
from conceptlens.errors import NotFittedError, ParameterError
from helpers import TinyNet


@pytest.fixture()
def split() -> cl.ModelSplit:
    return cl.ModelSplit(TinyNet(), "auto")


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_names_must_be_strings(split) -> None:
    with pytest.raises(ParameterError, match="method must be a name"):
        cl.ConceptExplainer(split, method=None)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="importance must be a name"):
        cl.ConceptExplainer(split, importance=3)  # type: ignore[arg-type]


def test_unknown_method_params_fail_at_construction_listing_the_valid_ones(split) -> None:
    with pytest.raises(ParameterError, match=r"no parameter\(s\) \['max_iters'\].*max_iter"):
        cl.ConceptExplainer(split, method="nmf", method_params={"max_iters": 5})
    with pytest.raises(ParameterError, match="method_params must be a dict"):
        cl.ConceptExplainer(split, method="nmf", method_params=[("max_iter", 5)])  # type: ignore[arg-type]
    ex = cl.ConceptExplainer(split, method="craft", n_concepts=3, method_params={"patch_size": 8})
    assert ex.method_params == {"patch_size": 8}


def test_batch_size_must_be_an_integer() -> None:
    for bad in ("8", 0, 2.5, True):
        with pytest.raises(ParameterError, match="batch_size"):
            cl.ModelSplit(TinyNet(), "auto", batch_size=bad)  # type: ignore[arg-type]


def test_sobol_options_are_checked_on_the_exact_path_too(split, x) -> None:
    assert split.linear_head() is not None  # the closed form runs, which never uses n_designs
    ex = cl.ConceptExplainer(split, method="nmf", n_concepts=3, importance="sobol",
                             importance_params={"n_designs": 0})
    with pytest.raises(ParameterError, match="n_designs must be an integer ≥ 1"):
        ex.fit(x, target=1)


def test_mismatched_images_and_activations(split, x) -> None:
    ex = cl.ConceptExplainer(split, method="nmf", n_concepts=3)
    with pytest.raises(ParameterError, match="activations of 3 images but x has 12"):
        ex.fit(x, target=1, A=split.g(x[:3]))
    ex.fit(x, target=1)
    with pytest.raises(ParameterError, match="activations of 5 images but x has 2"):
        ex.explain(x[:2], A=split.g(x[:5]))
    assert ex.explain(x[:2], A=split.g(x[:2])).scores.shape == (2, 3)


def test_fidelity_of_an_unfitted_explainer(split, x) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        cl.metrics.fidelity(cl.ConceptExplainer(split), x)
