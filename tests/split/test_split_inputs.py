"""Any input size (#21 item 4): a split probed at 224 × 224 takes every size its model takes, fx and hooks
alike; layouts (channels-first, channels-last, tokens) are told apart."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import conceptlens as cl
from conceptlens.errors import LayerError, ParameterError
from conceptlens.split.layout import Layout, classify, from_grid, grid_of, to_grid


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize("mode", ["hooks", "fx"])
@pytest.mark.parametrize("layer", ["layer4", "layer3", "auto"])
def test_a_split_accepts_any_input_size(resnet: nn.Module, mode: str, layer: str) -> None:
    s = cl.ModelSplit(resnet, layer, mode=mode)  # probed at 224 × 224
    assert s.mode == mode
    stride = 32 if layer in ("layer4", "auto") else 16
    for hw in [(32, 48), (224, 224), (100, 37)]:
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
        A = s.g(x)
        # the grid of this input: ceil(side / stride) positions per side
        assert tuple(A.shape[1:3]) == tuple(-(-d // stride) for d in hw)
        with torch.no_grad():
            assert (s.h(A) - resnet(x)).abs().max() < 1e-5


def test_hook_split_h_takes_a_grid_its_g_never_made(resnet: nn.Module) -> None:
    x = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    A = cl.ModelSplit(resnet, "layer4", mode="fx").g(x)
    fresh = cl.ModelSplit(resnet, "layer4", mode="hooks")  # h must size its zero input from A alone
    with torch.no_grad():
        assert (fresh.h(A) - resnet(x)).abs().max() < 1e-5
        assert (fresh.h(A * 0.5) - cl.ModelSplit(resnet, "layer4").h(A * 0.5)).abs().max() < 1e-5


def test_h_still_checks_channels_and_rank(resnet: nn.Module) -> None:
    s = cl.ModelSplit(resnet, "layer4", mode="hooks")
    with pytest.raises(ParameterError, match=r"\[N, h, w, 512\]"):
        s.h(torch.zeros(1, 2, 2, 256))
    with pytest.raises(ParameterError, match=r"\[N, h, w, 512\]"):
        s.h(torch.zeros(1, 512))
    flat = cl.ModelSplit(resnet, "avgpool")
    with pytest.raises(ParameterError, match=r"\[N, 1, 1, 512\]|\[N, h, w, 512\]"):
        flat.h(torch.zeros(1, 3))


def test_layouts_are_told_apart() -> None:
    assert classify((1, 64, 7, 7), (224, 224), None) == Layout("nchw")
    assert classify((1, 7, 7, 768), (224, 224), None) == Layout("nhwc")
    assert classify((1, 64, 2, 3), (64, 96), None) == Layout("nchw")  # a non-square input decides
    assert classify((1, 2, 3, 64), (64, 96), None) == Layout("nhwc")
    assert classify((1, 197, 192), (224, 224), 1) == Layout("tokens", 1)
    assert classify((1, 197, 192), (224, 224), None) == Layout("tokens", 1)  # inferred: 1 + 14 × 14
    assert classify((1, 198, 192), (224, 224), None) == Layout("tokens", 2)  # DeiT: class + distillation
    assert classify((1, 49, 768), (224, 224), None) == Layout("tokens", 0)  # Swin's last window
    assert classify((1, 3, 197, 64), (224, 224), None).kind == "nchw"  # attention heads: not a grid of 3
    assert classify((1, 1000), (224, 224), None) == Layout("flat")
    assert classify((1, 7, 192), (224, 224), 1).kind == "other"  # 6 patches: no grid of a square


def test_token_grid_round_trip_and_a_wrong_token_count() -> None:
    raw = torch.randn(2, 1 + 3 * 5, 8)
    lay = Layout("tokens", 1)
    A, extra = to_grid(raw, lay, (48, 80), "blocks.3")
    assert A.shape == (2, 3, 5, 8) and extra.shape == (2, 1, 8)
    assert torch.equal(A[:, 1, 2], raw[:, 1 + 1 * 5 + 2])  # row-major patches after the class token
    assert torch.equal(from_grid(A, lay, extra), raw)
    assert torch.equal(from_grid(A, lay, extra[0])[:, 0], extra[0, 0].expand(2, -1))  # [E, C] for all
    with pytest.raises(LayerError, match=r"'blocks\.3' gave 17 tokens for a 48×80 input.*1 class/register"):
        grid_of(lay, 17, (48, 80), "blocks.3")
