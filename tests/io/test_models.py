"""The model zoo: real EfficientNet-Lite0 offline, torchvision architectures with local weights, factories."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision
from torch import nn

import conceptlens as cl
from conceptlens.errors import ModelError


def test_lite0_is_real_and_offline(lite0: nn.Module, photos: torch.Tensor) -> None:
    assert not lite0.training
    p = lite0.preset
    assert p.size == 224 and len(p.classes) == 1000
    assert p.mean == pytest.approx((127 / 255,) * 3) and p.std == pytest.approx((128 / 255,) * 3)
    with torch.no_grad():
        top = lite0(photos[:2]).argmax(1).tolist()
    # chelsea is a tabby cat, coffee is an espresso: the real ImageNet weights know both
    assert p.classes[top[0]] in {"Egyptian cat", "tabby", "tiger cat"}
    assert p.classes[top[1]] == "espresso"


def test_torchvision_with_local_weights(tmp_path) -> None:
    ref = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    m = cl.models.load("torchvision:resnet18", weights=path, num_classes=7)
    assert not m.training and len(m.preset.classes) == 7
    for (k, a), b in zip(ref.state_dict().items(), m.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_factory_and_module() -> None:
    m = cl.models.load("torchvision.models:resnet18", num_classes=3)
    assert isinstance(m, torchvision.models.ResNet) and m.fc.out_features == 3
    mod = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).train()
    assert not cl.models.load(mod).training


def test_bad_models(tmp_path) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        cl.models.load("resnet")
    with pytest.raises(ModelError, match="did you mean"):
        cl.models.load("torchvision:resnet19")
    with pytest.raises(ModelError, match="does not exist"):
        cl.models.load("torchvision:resnet18", weights=tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), wrong)
    with pytest.raises(ModelError, match="do not fit"):
        cl.models.load("torchvision:resnet18", weights=wrong)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # executing this would create the marker file
        return (open, (self.marker, "w"))


def test_pickled_code_is_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"w": _Evil(str(marker))}, f)
    with pytest.raises(ModelError, match="safely"):
        cl.models.load("torchvision:resnet18", weights=bad)
    assert not marker.exists()


def test_shipped_imagenet_class_names_are_torchvisions_and_need_no_torchvision_import() -> None:
    import subprocess
    import sys

    from torchvision.models import ResNet50_Weights

    from conceptlens.io.models import imagenet_classes

    assert imagenet_classes() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    code = ("import sys; from conceptlens.io import models; m = models.load('efficientnet_lite0'); "
            "assert m.preset.classes[285] == 'Egyptian cat'; assert 'torchvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
