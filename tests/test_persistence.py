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


# ------------------------------------------------------------------ validation (an editor who re-signs)
def _resign(src, dst, edit_manifest=None, edit_tensors=None, raw_text=None):  # noqa: ANN001, ANN202
    """Rewrite a saved file as an attacker would: edit it, then recompute the (unkeyed) digest."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from conceptlens.persistence import _digest_text

    with safe_open(str(src), framework="pt") as f:
        text = f.metadata()["conceptlens"]
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    manifest = json.loads(text)
    if edit_manifest:
        edit_manifest(manifest)
    if edit_tensors:
        edit_tensors(tensors)
    text = raw_text if raw_text is not None else json.dumps(manifest)
    save_file(tensors, str(dst),
              metadata={"conceptlens": text, "conceptlens.sha256": _digest_text(text, tensors)})
    return dst


@pytest.mark.parametrize("case, match", [
    ("target -1", "integers"),
    ("target 99", "out of range"),
    ("negated bank", "negative entries"),
    ("extra tensor", "unexpected tensors"),
    ("unknown parameter", "no parameter"),
    ("unknown method", "unknown method"),
    ("k mismatch", "shape"),
    ("nan", "NaN"),
    ("params not a dict", "'params'"),
])
def test_an_edited_and_resigned_file_is_refused(tmp_path, case, match) -> None:
    path, _, _ = _saved(tmp_path, "helpers:TinyNet")
    edits = {
        "target -1": dict(edit_manifest=lambda m: m.update(target=-1)),
        "target 99": dict(edit_manifest=lambda m: m.update(target=99)),
        "negated bank": dict(edit_tensors=lambda t: t.update({"decomposition.components_":
                                                              -t["decomposition.components_"]})),
        "extra tensor": dict(edit_tensors=lambda t: t.update({"decomposition.encode": torch.zeros(1)})),
        "unknown parameter": dict(edit_manifest=lambda m: m["decomposition_params"].update(evil=1)),
        "unknown method": dict(edit_manifest=lambda m: m["params"].update(method="os")),
        "k mismatch": dict(edit_tensors=lambda t: t.update(importance=torch.zeros(7))),
        "nan": dict(edit_tensors=lambda t: t.update(weights=torch.full_like(t["weights"], float("nan")))),
        "params not a dict": dict(edit_manifest=lambda m: m.update(params=[1, 2])),
    }
    bad = _resign(path, tmp_path / "bad.cl", **edits[case])
    with pytest.raises(SavedFileError, match=match):
        cl.ConceptExplainer.load(bad, model=TinyNet())


def test_the_digest_is_checked_before_the_manifest_is_parsed(tmp_path) -> None:
    path, _, _ = _saved(tmp_path, "helpers:TinyNet")
    deep = '{"schema": "conceptlens.explainer/2", "x": ' + "[" * 100_000
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "deep.cl"),
              metadata={"conceptlens": deep, "conceptlens.sha256": "0" * 64})
    with pytest.raises(SavedFileError, match="modified"):  # no RecursionError: never parsed
        cl.ConceptExplainer.load(tmp_path / "deep.cl", model=TinyNet())
    resigned = _resign(path, tmp_path / "deep2.cl", raw_text=deep)  # re-signed: parsed, and refused cleanly
    with pytest.raises(SavedFileError, match="RecursionError|no valid"):
        cl.ConceptExplainer.load(resigned, model=TinyNet())
    big = '{"schema": "conceptlens.explainer/2"' + " " * 5_000_000 + "}"
    huge = _resign(path, tmp_path / "huge.cl", raw_text=big)
    with pytest.raises(SavedFileError, match="at most"):
        cl.ConceptExplainer.load(huge, model=TinyNet())


# ------------------------------------------------------------------ fuzz: bytes of a real saved file
def test_fuzzed_files_load_identically_or_raise_a_conceptlens_error(tmp_path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    path, ex, x = _saved(tmp_path, "helpers:TinyNet")
    raw = path.read_bytes()
    ref = ex.explain(x)
    model = TinyNet()

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=4),
           st.one_of(st.none(), st.integers(0, len(raw))))
    def check(flips: list[tuple[int, int]], cut: int | None) -> None:
        data = bytearray(raw)
        for i, b in flips:
            data[i] = b
        if cut is not None:
            data = data[:cut]
        f = tmp_path / "fuzz.cl"
        f.write_bytes(bytes(data))
        try:
            back = cl.ConceptExplainer.load(f, model=model)
        except ConceptLensError:
            return
        e = back.explain(x)  # it loaded: then it must be the same explainer
        for name in ("scores", "weights", "contributions", "residual", "logits"):
            assert torch.equal(getattr(e, name), getattr(ref, name)), name
        assert e.bias == ref.bias and back.target_ == ex.target_

    check()


def test_dtypes_and_crop_shapes_are_validated(tmp_path) -> None:
    path, _, _ = _saved(tmp_path, "helpers:TinyNet")
    bad = _resign(path, tmp_path / "int.cl", edit_tensors=lambda t: t.update(weights=t["weights"].long()))
    with pytest.raises(SavedFileError, match="dtype"):
        cl.ConceptExplainer.load(bad, model=TinyNet())
    long = torch.long
    crops = {"crops.image_index": torch.zeros(3, dtype=long), "crops.boxes": torch.zeros(3, 4, dtype=long),
             "crops.scores": torch.zeros(3, 5), "crops.predicted": torch.zeros(3, dtype=long)}
    bad = _resign(path, tmp_path / "crops.cl", edit_tensors=lambda t: t.update(crops))  # scores [3, 5], k = 3
    with pytest.raises(SavedFileError, match="crops"):
        cl.ConceptExplainer.load(bad, model=TinyNet())
