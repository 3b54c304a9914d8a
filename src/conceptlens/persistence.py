"""Saving and loading a fitted explainer: one safetensors file, nothing pickled, nothing executed.

The file holds the tensors (the decomposition's fitted state, importance, weights, fit scores and logits,
the crops and the concept tree when there are any) and, in the safetensors header, a JSON manifest: the
schema, the library versions, the model's name, the layer, the method and its parameters, the target and
a SHA-256 over the manifest and the tensors. Loading parses data only and never imports or calls anything
the file names: only zoo models whose weights ship with the library resolve by themselves, any other model
comes from the caller (``model=``), or, for a ``package.module:factory`` name, from an explicit
``trust_code=True``. The digest detects corruption; it is not keyed, so it does not prove who wrote the
file (anyone who edits it can recompute it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from conceptlens import decompose
from conceptlens._io import atomic_write
from conceptlens.errors import ConceptLensError, SavedFileError
from conceptlens.importance.base import Importance
from conceptlens.io.crops import CropSet
from conceptlens.split.model_split import ModelSplit

__all__ = ["SCHEMA", "save", "load", "read_saved", "model_named_in"]

SCHEMA = "conceptlens.explainer/1"
T = TypeVar("T")


def _digest(tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> str:
    """SHA-256 over the tensors and the manifest (all of it but the digest itself)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(i, (int, float, str, bool)) for i in v):
            out[k] = list(v)
    return out


def save(ex: Any, path: str | os.PathLike[str]) -> Path:
    """Write a fitted explainer to one safetensors file (atomic; no pickle).

    Parameters
    ----------
    ex
        A fitted :class:`~conceptlens.ConceptExplainer`.
    path
        The file to write (its folder is created).

    Returns
    -------
    Path
        ``path``.
    """
    from safetensors.torch import save as st_save

    tensors = {f"decomposition.{k}": v.detach().cpu().contiguous()
               for k, v in ex.decomposition_.state_tensors().items()}
    imp = ex.importance_result_
    tensors.update({"importance": imp.values.detach().cpu().contiguous(),
                    "weights": imp.weights.detach().cpu().contiguous(),
                    "fit_scores": ex.fit_scores_.detach().cpu().contiguous(),
                    "fit_logits": ex.fit_logits_.detach().cpu().contiguous()})
    if imp.ci_low is not None and imp.ci_high is not None:
        tensors["importance_ci_low"] = imp.ci_low.detach().cpu().contiguous()
        tensors["importance_ci_high"] = imp.ci_high.detach().cpu().contiguous()
    crops = getattr(ex, "crops_", None)
    if crops is not None:
        for name in ("image_index", "boxes", "scores", "predicted"):
            tensors[f"crops.{name}"] = getattr(crops, name).detach().cpu().contiguous()
    tree_structure = None
    if getattr(ex, "tree_", None) is not None:
        from conceptlens.recursive import tree_state

        tree_structure, tree_tensors = tree_state(ex.tree_)
        tensors.update(tree_tensors)
    import safetensors

    from conceptlens._version import __version__

    manifest = {
        "schema": SCHEMA,
        "versions": {"conceptlens": __version__, "torch": torch.__version__,
                     "safetensors": getattr(safetensors, "__version__", "?")},
        "model": getattr(ex.split.model, "cl_name", type(ex.split.model).__name__),
        "layer": ex.split.layer,
        "params": ex.get_params(),
        "decomposition_params": _jsonable(ex.decomposition_.get_params()),
        "target": ex.target_,
        "importance_method": imp.method,
    }
    if tree_structure is not None:
        manifest["tree"] = tree_structure
    manifest["sha256"] = _digest(tensors, manifest)
    data = st_save(tensors, metadata={"conceptlens": json.dumps(manifest)})
    return atomic_write(path, data)


def model_named_in(manifest: dict[str, Any], path: str | os.PathLike[str], *,
                   trust_code: bool = False) -> Any:
    """The model a saved file names, loaded only when that needs no code the file chose.

    Only zoo models whose weights ship with conceptlens (:data:`conceptlens.io.models.SELF_CONTAINED`)
    resolve by themselves. A ``"package.module:factory"`` name is imported and called only with
    ``trust_code=True``; any other name (a torchvision architecture, whose weights the file does not hold)
    needs the model from the caller.

    Raises
    ------
    SavedFileError
        Saying which model the file names and how to pass it (``model=`` / ``--model``).
    """
    from conceptlens.io import models

    name = manifest.get("model")
    if not isinstance(name, str) or not name:
        raise SavedFileError(f"{str(path)!r}: the manifest's model name is {name!r}, not a name; pass model=")
    if name in models.SELF_CONTAINED:
        return models.load(name)
    is_factory = ":" in name and not name.startswith(("torchvision:", "timm:", "hf:"))
    if is_factory and trust_code:
        return models.load(name)
    how = (f"or, if you trust this file, trust_code=True (CLI: --trust-model-factory) to import and call "
           f"{name!r}" if is_factory else "with its weights (CLI: --model NAME --weights FILE)")
    raise SavedFileError(
        f"{str(path)!r} was fitted on the model {name!r}, which conceptlens does not load by itself (loading "
        f"a file never imports or runs code it names): pass the model, model=your_module {how}"
    )


def load(
    cls: type[T], path: str | os.PathLike[str], model: Any = None, *, split: ModelSplit | None = None,
    trust_code: bool = False,
) -> T:
    """Load an explainer written by :func:`save` as an instance of ``cls``.

    ``cls`` is the explainer class (:class:`~conceptlens.ConceptExplainer`), passed in so that this module
    needs nothing above it; ``path``, ``model``, ``split`` and ``trust_code`` as in
    :meth:`conceptlens.ConceptExplainer.load`. Without ``model`` and ``split`` the model comes from
    :func:`model_named_in`.
    """
    manifest, tensors = read_saved(path)
    if split is None:
        from conceptlens.io import models as models

        if model is None:
            model = model_named_in(manifest, path, trust_code=trust_code)
        elif isinstance(model, str):  # the caller's own choice of name, not the file's
            model = models.load(model)
        split = ModelSplit(model, manifest["layer"])
    elif split.layer != manifest["layer"]:
        raise SavedFileError(f"the explainer was fitted at layer {manifest['layer']!r}, "
                             f"the split is at {split.layer!r}")
    p = manifest["params"]
    ex = cls(split, method=p["method"], n_concepts=p["n_concepts"], importance=p["importance"],
             seed=p["seed"],
             method_params=p.get("method_params"), importance_params=p.get("importance_params"))
    dcls = decompose.get(p["method"])
    d = dcls(**manifest.get("decomposition_params", {}))
    if dcls.uses_head:
        d.set_head(split.h)
    d.load_state_tensors({k.split(".", 1)[1]: v for k, v in tensors.items()
                          if k.startswith("decomposition.")})
    if d.components_.shape[1] != split.activation_shape[-1]:
        raise SavedFileError(
            f"the saved bank has {d.components_.shape[1]} channels but layer {split.layer!r} has "
            f"{split.activation_shape[-1]}: load it with the model it was fitted on"
        )
    ex.decomposition_ = d
    ex.target_ = int(manifest["target"])
    ex.fit_scores_ = tensors["fit_scores"]
    ex.fit_logits_ = tensors["fit_logits"]
    ex.importance_result_ = Importance(values=tensors["importance"], weights=tensors["weights"],
                                       method=manifest["importance_method"],
                                       ci_low=tensors.get("importance_ci_low"),
                                       ci_high=tensors.get("importance_ci_high"))
    ex.importance_ = ex.importance_result_.values
    ex.weights_ = ex.importance_result_.weights
    if "crops.image_index" in tensors:
        try:
            ex.crops_ = CropSet(**{n: tensors[f"crops.{n}"]
                                   for n in ("image_index", "boxes", "scores", "predicted")})
        except KeyError as exc:
            raise SavedFileError(f"{str(path)!r}: the saved crops are incomplete ({exc})") from exc
    if "tree" in manifest:
        from conceptlens.recursive import tree_from_state

        try:
            ex.tree_ = tree_from_state(manifest["tree"], tensors)
        except ConceptLensError as exc:
            raise SavedFileError(f"{str(path)!r}: {exc}") from exc
    return ex


def read_saved(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse a saved explainer: ``(manifest, tensors)``; SavedFileError on any corruption or tampering."""
    p = Path(path)
    if not p.is_file():
        raise SavedFileError(f"no saved explainer at {str(p)!r}")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            # fresh, aligned storage: BLAS kernels may sum in another order on oddly aligned buffers
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except Exception as exc:
        raise SavedFileError(
            f"{str(p)!r} is not a readable conceptlens file (truncated or corrupt: {exc}); "
            "fit and save it again"
        ) from exc
    try:
        manifest = json.loads(meta["conceptlens"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise SavedFileError(f"{str(p)!r} has no valid conceptlens manifest; "
                             "was it written by ConceptExplainer.save?") from exc
    if manifest.get("schema") != SCHEMA:
        raise SavedFileError(f"{str(p)!r} has schema {manifest.get('schema')!r}; "
                             f"this version reads {SCHEMA!r}")
    if manifest.get("sha256") != _digest(tensors, manifest):
        raise SavedFileError(f"{str(p)!r} was modified after it was saved (checksum mismatch); "
                             "refusing to load it")
    for key in ("model", "layer", "params", "target", "importance_method"):
        if key not in manifest:
            raise SavedFileError(f"{str(p)!r}: the manifest lacks {key!r}")
    return manifest, tensors
