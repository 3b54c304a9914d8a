"""Call sites: naming, the automatic layers of activation matching, the logits of a model's output."""

from __future__ import annotations

import pytest
import torch

from conceptlens.attribution.masks import MaskExplainer
from conceptlens.errors import LayerError, ParameterError
from conceptlens.split.sites import activation_sites, default_layers
from helpers import TinyNet


# ----------------------------------------------------------------------------------------- sites
def test_automatic_layers_are_the_last_activation_of_each_resolution(tiny: TinyNet) -> None:
    sites = activation_sites(tiny, torch.zeros(1, 3, 16, 16))
    layers = default_layers(sites)
    assert list(layers) == ["features.1", "features.3"]
    assert layers["features.3"] > layers["features.1"] and sum(layers.values()) == pytest.approx(1.0)


def test_automatic_layers_on_resnet18_are_the_stage_outputs() -> None:
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=10).eval()  # random weights: only the structure matters
    layers = default_layers(activation_sites(model, torch.zeros(1, 3, 64, 64)))
    stages = ["relu", "layer1.1.relu@1", "layer2.1.relu@1", "layer3.1.relu@1", "layer4.1.relu@1"]
    assert list(layers) == stages
    # the authors' weights 1, 2, 2, 4, 8 (normalised)
    assert [round(v * 17, 6) for v in layers.values()] == [1, 2, 2, 4, 8]
    # a multi-call module needs its call index
    ex = MaskExplainer(model, layers=["layer1.1.relu"], steps=1, size=4)
    with pytest.raises(LayerError, match="runs 2 times"):
        ex.explain(torch.zeros(1, 3, 64, 64))


def test_model_outputs_are_read_as_logits_or_rejected_with_a_parameter_error() -> None:
    from conceptlens.split.sites import logits_of as _logits

    t = torch.zeros(2, 3)
    assert _logits(t) is t and _logits((t, None)) is t and _logits({"logits": t}) is t
    with pytest.raises(ParameterError, match="logits tensor"):
        _logits("not logits")


def test_capture_keeps_the_chosen_outputs_and_removes_its_hooks_even_on_an_error(tiny: TinyNet) -> None:
    from conceptlens.split.sites import capture

    sites = [s for s in activation_sites(tiny, torch.zeros(1, 3, 16, 16)) if s.name == "features.3"]
    with capture(tiny, sites) as acts:
        tiny(torch.zeros(2, 3, 16, 16))
    assert list(acts) == ["features.3"] and acts["features.3"].shape == (2, 16, 8, 8)
    with pytest.raises(RuntimeError), capture(tiny, sites):
        tiny(torch.zeros(2, 5, 16, 16))  # wrong number of channels: the forward pass fails
    assert all(not m._forward_hooks for m in tiny.modules())
