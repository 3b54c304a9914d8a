"""conceptlens.persistence: loading a saved explainer never imports or calls what the file names."""

from __future__ import annotations

import importlib

import pytest
import torch

import conceptlens as cl
from conceptlens.errors import ConceptLensError, SavedFileError
from conceptlens.persistence import model_named_in
from helpers import TinyNet


def _saved(tmp_path, name: str):  # noqa: ANN202
    model = TinyNet()
    model.cl_name = name  # what the manifest records as the model
    split = cl.ModelSplit(model, "auto")
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ex = cl.ConceptExplainer(split, method="nmf", n_concepts=3, seed=0).fit(x, target=1)
    return ex.save(tmp_path / "e.cl"), ex, x


@pytest.mark.parametrize("name", ["os:abort", "tempfile:mkdtemp", "helpers:TinyNet", "torchvision:resnet18"])
def test_a_named_model_is_never_imported_or_called(tmp_path, monkeypatch, name) -> None:
    path, _, _ = _saved(tmp_path, name)
    imported: list[str] = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda n, *a: imported.append(n) or real(n, *a))
    with pytest.raises(SavedFileError, match="pass the model") as err:
        cl.ConceptExplainer.load(path)
    assert name in str(err.value) and isinstance(err.value, ConceptLensError)
    assert imported == []  # nothing the file names was imported (let alone called)
    if ":" in name and not name.startswith("torchvision:"):
        assert "trust_code=True" in str(err.value) and "--trust-model-factory" in str(err.value)


def test_trust_code_imports_the_factory_and_explains_the_same(tmp_path) -> None:
    path, ex, x = _saved(tmp_path, "helpers:TinyNet")
    back = cl.ConceptExplainer.load(path, trust_code=True)
    torch.testing.assert_close(back.explain(x).contributions, ex.explain(x).contributions, rtol=0, atol=0)


def test_the_callers_model_is_used(tmp_path) -> None:
    path, ex, x = _saved(tmp_path, "os:abort")
    back = cl.ConceptExplainer.load(path, model=TinyNet())
    torch.testing.assert_close(back.explain(x).logits, ex.explain(x).logits, rtol=0, atol=0)


def test_only_self_contained_zoo_names_resolve() -> None:
    assert cl.models.SELF_CONTAINED == frozenset({"efficientnet_lite0"})
    for bad in (None, 42, ""):
        with pytest.raises(SavedFileError, match="not a name"):
            model_named_in({"model": bad}, "f.cl")
