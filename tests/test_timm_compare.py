"""timm models end to end (#21 item 6): resnet18 and vit_tiny_patch16_224 with random weights (nothing is
downloaded) run compare with every concept method."""

from __future__ import annotations

import pytest
import torch

import conceptlens as cl
from conceptlens.workflows.compare import compare

pytest.importorskip("timm")

_QUICK = {"eddp": {"max_iter": 30}, "face": {"max_iter": 60}}


def _run(name: str, size: int, n: int, patch: int, signed: str = "keep"
         ) -> tuple[cl.ModelSplit, dict[str, dict]]:
    model = cl.models.load(f"timm:{name}")
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    split = cl.ModelSplit(model, "auto", probe=x[:2], signed=signed)
    methods = cl.decompose.available()
    params = {**_QUICK, "craft": {"patch_size": patch, "stride": patch}}
    res = compare(split, x, methods=methods, n_concepts=3, seed=0, progress=False,
                  method_params={k: v for k, v in params.items() if k in methods})
    return split, {r["method"]: r for r in res.rows}


def test_timm_resnet18_every_method() -> None:
    split, rows = _run("resnet18", 64, 10, 32)  # 64 × 64 inputs: a 2 × 2 grid at layer4
    assert split.layer == "layer4" and split.activation_shape == (2, 2, 512)
    assert set(rows) == set(cl.decompose.available())
    for name, row in rows.items():
        assert row["error"] == "", (name, row["error"])
        assert 0.0 <= row["fid_c"] <= 1.0 and row["reconstruction_error"] >= 0.0


@pytest.mark.slow  # about 90 s at load 3 on 2 cores (a 224 × 224 ViT forward for every Sobol design)
def test_timm_vit_tiny_every_method() -> None:
    # signed tokens as [max(A, 0), max(−A, 0)]: an exact split that NMF-like methods fit too
    split, rows = _run("vit_tiny_patch16_224", 224, 6, 112, signed="split")
    # a class-token ViT: the last block's patches do not reach the logits, so one block earlier
    assert split.layer == "blocks.10" and split.layout.kind == "tokens"
    assert split.activation_shape == (14, 14, 2 * 192)
    assert set(rows) == set(cl.decompose.available())
    for name, row in rows.items():
        assert row["error"] == "", (name, row["error"])
        assert 0.0 <= row["fid_c"] <= 1.0
