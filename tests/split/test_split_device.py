"""Devices (#21 item 5): scripts/gpu_check.py, the check `make gpu-check` runs, in its CPU self-check mode; a
split and its activations follow the model's device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import conceptlens as cl
from helpers import TinyNet

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def _gpu_check():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_check", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_gpu_check_self_check_on_cpu(capsys) -> None:  # type: ignore[no-untyped-def]
    check = _gpu_check()
    assert check.main(["--device", "cpu", "--methods", "nmf,pca"]) == 0
    out = capsys.readouterr().out
    assert "2/2 methods agree" in out and out.count(" ok ") == 2
    # the comparison can fail: nothing passes a negative tolerance
    assert check.main(["--device", "cpu", "--methods", "pca", "--rtol", "-1"]) == 1
    assert "failed: pca" in capsys.readouterr().out


def test_gpu_check_is_skipped_without_a_gpu(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check.main([]) == 0
    assert "skipped" in capsys.readouterr().out


def test_split_follows_the_model_device() -> None:
    m = cl.models.load(TinyNet().double(), device="cpu")
    s = cl.ModelSplit(m, "auto")
    assert s.device == torch.device("cpu")
    A = s.g(torch.randn(2, 3, 16, 16))  # float32 images: moved and cast to the model's
    assert A.device == s.device and A.dtype == torch.float64
    if not torch.cuda.is_available():
        with pytest.raises(cl.ConceptLensError, match="no CUDA GPU"):
            cl.models.load(TinyNet(), device="cuda:0")
