"""Issue #23, models: float64 / float16 models run (inputs cast to the model's dtype), a meta-device model
is a ModelError, dict outputs work through ModelSplit in both modes, bad models.load arguments are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.errors import ModelError, ParameterError, SplitError
from helpers import TinyNet


class DictNet(nn.Module):
    """TinyNet returning ``{key: logits, "features": pooled}`` (the Hugging Face convention for "logits")."""

    def __init__(self, key: str = "logits") -> None:
        super().__init__()
        self.net = TinyNet()
        self.preset = self.net.preset
        self.key = key
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: self.net(x), "other": x.mean((1, 2, 3))}


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------------------- dtypes and devices
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_non_float32_models_run_with_inputs_cast(dtype: torch.dtype, mode: str) -> None:
    # half precision comes back as float32 (what the rest computes in); float64 keeps its precision
    out = torch.float64 if dtype == torch.float64 else torch.float32
    net = TinyNet().to(dtype)
    split = cl.ModelSplit(net, "features", mode=mode)
    x = _x()
    A = split.g(x)
    assert A.dtype == out and split.h(A).dtype == out
    ref = net(x.to(dtype)).to(out)
    tol = 1e-6 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(split(x), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(split.g(x.double()), A)  # float64 images are cast as well


def test_float64_model_fits_and_explains_like_its_float32_twin() -> None:
    x = _x(6)
    ex32 = cl.ConceptExplainer(cl.ModelSplit(TinyNet()), method="pca", n_concepts=2).fit(x, target=1)
    ex64 = cl.ConceptExplainer(cl.ModelSplit(TinyNet().double()), method="pca", n_concepts=2).fit(x, target=1)
    torch.testing.assert_close(ex64.concepts_.float(), ex32.concepts_, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ex64.importance_.float(), ex32.importance_, atol=1e-4, rtol=1e-4)
    assert ex64.split.linear_head() is not None and ex64.split.linear_head().weight.dtype == torch.float64


def test_meta_device_model_says_it_holds_no_weights() -> None:
    net = TinyNet().to("meta")
    with pytest.raises(ModelError, match=r"holds no weights.*'features\.0\.weight'.*meta.*to_empty"):
        cl.ModelSplit(net)
    with pytest.raises(ModelError, match="holds no weights"):
        cl.models.load(net)


# ------------------------------------------------------------------------------- dict outputs
@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_dict_with_logits_works_through_model_split(mode: str) -> None:
    model = DictNet()
    split = cl.ModelSplit(model, "net.features", mode=mode)
    assert split.mode == mode
    x = _x()
    torch.testing.assert_close(split(x), model(x)["logits"])
    assert split.linear_head() is not None


@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_dict_without_logits_lists_its_keys_and_how_to_pick_one(mode: str) -> None:
    msg = r"without a 'logits' entry \(keys: 'out', 'other'\).*model\(x\)\[key\]"
    with pytest.raises(SplitError, match=msg):
        cl.ModelSplit(DictNet("out"), "net.features", mode=mode)


# ------------------------------------------------------------------------------- models.load arguments
@pytest.mark.parametrize("name", [42, None, 3.5, ["efficientnet_lite0"]])
def test_load_refuses_a_name_that_is_not_a_string_or_module(name: object) -> None:
    with pytest.raises(ModelError, match=rf"str\) or a torch\.nn\.Module, got {type(name).__name__}"):
        cl.models.load(name)  # type: ignore[arg-type]


def test_load_refuses_unknown_keyword_arguments_for_zoo_models() -> None:
    with pytest.raises(ModelError, match=r"takes no argument\(s\) 'dropout', 'foo'; it accepts weights, "
                                         r"num_classes, preset and device"):
        cl.models.load("torchvision:resnet18", foo=1, dropout=0.2)
    with pytest.raises(ModelError, match=r"load\(a torch\.nn\.Module\) takes no argument\(s\) 'foo'"):
        cl.models.load(TinyNet(), foo=1)
    with pytest.raises(ModelError, match=r"load\('efficientnet_lite0'\) takes no argument\(s\) 'pretrained'"):
        cl.models.load("efficientnet_lite0", pretrained=True)  # refused before anything is built
    # a factory still receives its keyword arguments
    m = cl.models.load("helpers:TinyNet", n_classes=3)
    assert m.fc.out_features == 3


@pytest.mark.parametrize("n", [0, -1, 2.0, True, "10"])
def test_load_refuses_num_classes_that_is_not_a_positive_integer(n: object) -> None:
    with pytest.raises(ParameterError, match=r"num_classes must be an integer"):
        cl.models.load("torchvision:resnet18", num_classes=n)  # type: ignore[arg-type]


def test_load_refuses_num_classes_for_efficientnet_lite0() -> None:
    with pytest.raises(ModelError, match=r"1000 ImageNet classes, not num_classes=10"):
        cl.models.load("efficientnet_lite0", num_classes=10)


def test_load_of_a_module_applies_its_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = TinyNet(seed=1)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    m = cl.models.load(TinyNet(seed=0), weights=path)
    torch.testing.assert_close(m.fc.weight, src.fc.weight)
