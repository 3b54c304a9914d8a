"""Tests of the concept world's CNN: its structure, the cache (written once, keyed, reproducible, rebuilt
when corrupt, shared files readable by others) and, slow, the accuracy of the real trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conceptlens._io import file_mode
from conceptlens.errors import ParameterError
from conceptlens.world import cnn
from conceptlens.world.concepts import ConceptWorld


# ------------------------------------------------------------------ the model: caching machinery (fast)
@pytest.fixture
def tiny_training(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A few training steps only: exercises training, caching and loading in about a second."""
    monkeypatch.setitem(cnn.TRAINING, "steps", 3)
    monkeypatch.setitem(cnn.TRAINING, "batch_size", 8)
    monkeypatch.setitem(cnn.TRAINING, "eval_size", 16)
    monkeypatch.setenv("CONCEPTLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_model_structure_and_attributes(tiny_training) -> None:
    world = ConceptWorld(size=32)
    model = cnn.trained_model(seed=0, progress=False, world=world)
    assert not model.training
    assert isinstance(model.features[-1], nn.ReLU)
    assert dict(model.named_children()).keys() >= {"features", "pool", "fc"}
    x, _, _, _ = world.sample(3, seed=0)
    A = model.features(x)
    assert A.shape == (3, cnn.ARCH["widths"][-1], 4, 4)
    assert torch.allclose(model.fc(A.mean((2, 3))), model(x), atol=1e-5)
    assert model(x).shape == (3, world.n_classes)
    assert ConceptWorld(**model.world_config).config == world.config
    assert model.preset.size == 32 and list(model.preset.classes) == world.class_names
    assert 0.0 <= model.training_info["heldout_accuracy"] <= 1.0


def test_model_cache_written_once_then_loaded(tiny_training, monkeypatch: pytest.MonkeyPatch) -> None:
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    m1 = cnn.trained_model(seed=3, progress=False)
    assert torch.equal(state, torch.get_rng_state())  # training leaves the global RNG alone
    assert torch.get_num_threads() == threads  # and the thread count
    files = list(tiny_training.glob("*.safetensors"))
    assert len(files) == 1 and not list(tiny_training.glob(".*"))  # no temp file left behind

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(cnn, "_train", no_training)
    m2 = cnn.trained_model(seed=3, progress=False)
    x = ConceptWorld().sample(4, seed=0)[0]
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))
    assert m2.training_info["cache_path"] == str(files[0])


def test_cache_file_is_readable_by_others(tiny_training) -> None:
    # a shared cache (CI, a team's $CONCEPTLENS_CACHE) must not be private to whoever trained first
    model = cnn.trained_model(seed=5, progress=False)
    path = Path(model.training_info["cache_path"])
    assert path.stat().st_mode & 0o777 == file_mode()


def test_model_cache_is_keyed_by_configuration(tiny_training) -> None:
    cnn.trained_model(seed=0, progress=False)
    cnn.trained_model(seed=1, progress=False)
    cnn.trained_model(seed=0, progress=False, world=ConceptWorld(seed=7))  # world seed: same model
    cnn.trained_model(seed=0, progress=False, world=ConceptWorld(n_classes=5))
    assert len(list(tiny_training.glob("*.safetensors"))) == 3


def test_model_training_is_reproducible(tiny_training, tmp_path) -> None:
    m1 = cnn.trained_model(seed=4, progress=False)
    m2 = cnn.trained_model(seed=4, progress=False, cache_dir=tmp_path / "elsewhere")
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k


def test_corrupt_cache_is_retrained(tiny_training) -> None:
    cnn.trained_model(seed=0, progress=False)
    (path,) = tiny_training.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unusable cached model"):
        model = cnn.trained_model(seed=0, progress=False)
    assert isinstance(model, cnn.ConceptCNN)
    cnn.trained_model(seed=0, progress=False)  # rewritten: loads cleanly now


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CONCEPTLENS_CACHE", str(tmp_path / "a"))
    assert cnn.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CONCEPTLENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cnn.default_cache_dir() == tmp_path / "x" / "conceptlens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cnn.default_cache_dir().parts[-2:] == (".cache", "conceptlens")


def test_model_bad_arguments_raise() -> None:
    with pytest.raises(ParameterError):
        cnn.trained_model(seed=-1)
    with pytest.raises(ParameterError):
        cnn.trained_model(world="not a world")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the model: the real thing (slow)
@pytest.mark.slow
def test_trained_model_accuracy_and_cache(world_model: nn.Module, record_property) -> None:
    model = world_model  # trained once per test run (tests/conftest.py), or loaded from the cache
    train_s = model.training_info["train_seconds"]
    world = ConceptWorld(**model.world_config)
    x, y, _, _ = world.sample(2000, seed=2024)  # never seen: training and its own check use other streams
    with torch.no_grad():
        logits = model(x)
    acc = float((logits.argmax(1) == y).float().mean())
    record_property("heldout_accuracy", acc)
    record_property("train_seconds", train_s)
    print(f"\ntrained_model: held-out accuracy {acc:.4f}, trained in {train_s:.1f} s")
    assert acc >= 0.97

    folder = Path(model.training_info["cache_path"]).parent
    again = cnn.trained_model(seed=0, progress=False, cache_dir=folder)
    # loaded, not retrained: a new training run would record its own duration
    assert again.training_info["train_seconds"] == model.training_info["train_seconds"]
    with torch.no_grad():
        assert torch.equal(again(x), logits)
