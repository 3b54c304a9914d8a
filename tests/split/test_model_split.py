"""ModelSplit: h(g(x)) == model(x) at many call sites, layer naming, 'auto', errors, linear heads."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import conceptlens as cl
from conceptlens.errors import LayerError, ParameterError, SplitError


def _x(n: int = 2, size: int = 224) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("layer", ["auto", "_swish@1", "_blocks.15", "_blocks.10", "_swish@0", "_bn1",
                                   "_blocks.3"])
def test_lite0_split_is_exact(lite0: nn.Module, layer: str) -> None:
    s = cl.ModelSplit(lite0, layer)
    x = _x()
    with torch.no_grad():
        ref = lite0(x)
        got = s.h(s.g(x))
    assert (got - ref).abs().max() < 1e-5
    assert s.g(x).shape[1:] == s.activation_shape


def test_lite0_auto_is_after_head_activation(lite0_split: cl.ModelSplit, photo_acts: torch.Tensor) -> None:
    assert lite0_split.layer == "_swish@1"
    assert lite0_split.activation_shape == (7, 7, 1280)
    assert photo_acts.min() >= 0  # ReLU6 output: NMF-ready
    assert lite0_split.mode == "fx"


@pytest.mark.parametrize("layer", ["auto", "layer3", "layer4.0", "layer2.1.relu@1", "avgpool", "fc"])
def test_resnet18_split_is_exact(layer: str) -> None:
    model = torchvision.models.resnet18().eval()
    s = cl.ModelSplit(model, layer)
    x = _x()
    with torch.no_grad():
        assert (s.h(s.g(x)) - model(x)).abs().max() < 1e-5


def test_resnet_auto_and_names() -> None:
    model = torchvision.models.resnet18().eval()
    s = cl.ModelSplit(model, "auto")
    assert s.layer == "layer4" and s.activation_shape == (7, 7, 512)
    # the second call of layer4.1.relu is the block's output: one site, several names
    assert cl.ModelSplit(model, "layer4.1.relu@1").layer == "layer4"
    assert cl.ModelSplit(model, "layer4.1.relu@-1").layer == "layer4"
    flat = cl.ModelSplit(model, "fc")
    assert flat.activation_shape == (1000,)


def test_module_called_twice_must_say_which(lite0: nn.Module) -> None:
    with pytest.raises(LayerError, match=r"runs 2 times.*_swish@0.*_swish@1"):
        cl.ModelSplit(lite0, "_swish")


def test_unknown_layer_lists_nearest(lite0: nn.Module) -> None:
    with pytest.raises(LayerError, match=r"nearest names: .*_blocks\.15\._bn1"):
        cl.ModelSplit(lite0, "_blocks.15._bn")
    with pytest.raises(cl.ConceptLensError):
        cl.ModelSplit(lite0, "no_such_layer")


def test_module_object_as_layer(lite0: nn.Module) -> None:
    s = cl.ModelSplit(lite0, lite0._blocks[15])
    assert s.layer == "_blocks.15"
    with pytest.raises(LayerError):
        cl.ModelSplit(lite0, nn.ReLU())


def test_skip_connection_cut_is_refused() -> None:
    model = torchvision.models.resnet18().eval()
    with pytest.raises(SplitError, match="skip connection.*'layer4.1'"):
        cl.ModelSplit(model, "layer4.1.conv2")


def test_hooks_mode_equals_fx(lite0: nn.Module) -> None:
    fx = cl.ModelSplit(lite0, "_blocks.15")
    hk = cl.ModelSplit(lite0, "_blocks.15", mode="hooks")
    assert hk.mode == "hooks"
    x = _x()
    A = fx.g(x)
    assert torch.allclose(hk.g(x), A, atol=1e-6)
    assert torch.allclose(hk.h(A * 0.5), fx.h(A * 0.5), atol=1e-4)


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so the split falls back to hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv(x))
        if a.sum() > -1:  # always true, but fx cannot know
            a = a * 1.0
        return self.fc(a.mean((2, 3)))


def test_untraceable_model_falls_back_to_hooks() -> None:
    m = _Untraceable().eval()
    s = cl.ModelSplit(m, "act", probe=torch.randn(2, 3, 10, 10))
    assert s.mode == "hooks" and s.activation_shape == (8, 8, 4)
    head = s.linear_head()
    assert head is not None and torch.equal(head.weight, m.fc.weight)


def test_training_mode_is_switched_with_warning() -> None:
    model = torchvision.models.resnet18().train()
    with pytest.warns(UserWarning, match="training mode"):
        cl.ModelSplit(model, "layer4")
    assert not model.training


def test_linear_head_detection(lite0: nn.Module, lite0_split: cl.ModelSplit) -> None:
    head = lite0_split.linear_head()
    assert head is not None
    assert torch.equal(head.weight, lite0._fc.weight) and torch.equal(head.bias, lite0._fc.bias)
    assert cl.ModelSplit(lite0, "_blocks.15").linear_head() is None  # conv head after it: not linear


def test_h_rejects_wrong_shape(lite0_split: cl.ModelSplit) -> None:
    # any grid is fine (#21: a 5 × 5 grid is a 160 × 160 input); the channel count and rank are not
    with pytest.raises(ParameterError, match=r"\[N, h, w, 1280\].*\[N, 7, 7, 1280\]"):
        lite0_split.h(torch.zeros(1, 5, 5, 1000))
    with pytest.raises(ParameterError, match=r"\[N, h, w, 1280\]"):
        lite0_split.h(torch.zeros(1, 1280))
    x = _x(1, 160)
    with torch.no_grad():
        assert (lite0_split.h(lite0_split.g(x)) - lite0_split.model(x)).abs().max() < 1e-5


def test_g_batches_agree(lite0_split: cl.ModelSplit) -> None:
    x = _x(5)
    assert torch.allclose(lite0_split.g(x, batch_size=2), lite0_split.g(x, batch_size=5), atol=1e-5)


def test_h_is_differentiable(lite0_split: cl.ModelSplit, photo_acts: torch.Tensor) -> None:
    A = photo_acts[:2].clone().requires_grad_(True)
    lite0_split.h(A)[:, 0].sum().backward()
    assert A.grad is not None and A.grad.abs().sum() > 0


def test_a_head_linear_only_on_non_negative_activations_is_not_taken_for_gap_linear() -> None:
    # #20: fc(GAP(relu(A))) cut before the ReLU sees negative activations; a probe in [0, 2] alone passed it
    class ReluHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))

    net = ReluHead().eval()
    before = cl.ModelSplit(net, "conv")  # signed activations
    assert float(before.g(torch.randn(2, 3, 8, 8)).min()) < 0
    assert before.linear_head() is None
    after = cl.ModelSplit(net, "relu")  # after the ReLU the head is GAP + linear, exactly
    lh = after.linear_head()
    assert lh is not None and torch.equal(lh.weight, net.fc.weight.detach())


def test_hook_mode_g_and_h_give_the_sequential_results_from_two_threads() -> None:
    # hook mode adds a hook to a module shared by every call: concurrent calls (the side-by-side fits and
    # measures) must not see each other's hooks
    from concurrent.futures import ThreadPoolExecutor

    class ConvHead(nn.Module):  # not GAP + linear: h runs the network through the hook
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.mix = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.mix(self.features(x))).mean((2, 3)))

    torch.manual_seed(0)
    split = cl.ModelSplit(ConvHead().eval(), "features", mode="hooks", probe=torch.randn(2, 3, 16, 16))
    assert split.mode == "hooks" and split.linear_head() is None
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2 + i % 3, 3, 16, 16, generator=g) for i in range(12)]
    with torch.no_grad():
        want_A = [split.g(x) for x in xs]
        want = [split.h(a) for a in want_A]
        with ThreadPoolExecutor(2) as pool:
            for _ in range(4):
                got = list(pool.map(split.h, want_A))
                got_A = list(pool.map(split.g, xs))
                assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
                assert all(torch.equal(a, b) for a, b in zip(got_A, want_A, strict=True))
