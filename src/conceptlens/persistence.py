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
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import torch

from conceptlens import decompose
from conceptlens._io import atomic_write
from conceptlens.errors import ConceptLensError, SavedFileError
from conceptlens.importance.base import Importance
from conceptlens.io.crops import CropSet
from conceptlens.split.model_split import ModelSplit

__all__ = ["SCHEMA", "READS", "MAX_MANIFEST", "save", "load", "read_saved", "validate", "model_named_in"]

#: The schema this version writes: the manifest's raw text and the tensors are covered by one SHA-256 kept
#: beside the manifest (``conceptlens.sha256``), so the digest is checked before the JSON is parsed.
SCHEMA = "conceptlens.explainer/2"
#: Schemas this version reads (``/1``: the digest inside the manifest, checked after parsing).
READS = ("conceptlens.explainer/1", SCHEMA)
#: Largest manifest text read, in characters.
MAX_MANIFEST = 4 * 2**20
T = TypeVar("T")


def _digest_text(text: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the manifest's raw text and the tensors (schema 2)."""
    h = hashlib.sha256()
    h.update(text.encode())
    _hash_tensors(h, tensors)
    return h.hexdigest()


def _digest(tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> str:
    """SHA-256 over the tensors and the manifest, all of it but the digest itself (schema 1)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, sort_keys=True).encode())
    _hash_tensors(h, tensors)
    return h.hexdigest()


def _hash_tensors(h: Any, tensors: dict[str, torch.Tensor]) -> None:
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")


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
    extra = getattr(ex.split, "extra_tokens_", None)
    if extra is not None:  # a token layer's class / register tokens that h puts back (set_reference)
        tensors["split.extra_tokens"] = extra.detach().cpu().contiguous()
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
        "signed": ex.split.signed,
        "params": ex.get_params(),
        "decomposition_params": _jsonable(ex.decomposition_.get_params()),
        "target": ex.target_,
        "importance_method": imp.method,
    }
    if tree_structure is not None:
        manifest["tree"] = tree_structure
    text = json.dumps(manifest)  # "schema" first: a reader finds it without parsing the rest
    data = st_save(tensors, metadata={"conceptlens": text, "conceptlens.sha256": _digest_text(text, tensors)})
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
        split = ModelSplit(model, manifest["layer"], signed=manifest.get("signed", "keep"))
    elif split.layer != manifest["layer"] or split.signed != manifest.get("signed", "keep"):
        saved = manifest.get("signed", "keep")
        raise SavedFileError(f"the explainer was fitted at layer {manifest['layer']!r} with signed={saved!r},"
                             f" the split is at {split.layer!r} with signed={split.signed!r}: make the split "
                             "with those")
    if "split.extra_tokens" in tensors:  # h puts back the class tokens it was fitted with (on split too)
        now = getattr(split, "extra_tokens_", None)  # the probe's (or the caller's reference), [E, C]
        want = None if now is None else tuple(now.shape)
        got = tuple(tensors["split.extra_tokens"].shape)
        if got != want:
            raise SavedFileError(f"{str(path)!r} holds extra tokens of shape {got}, but layer "
                                 f"{split.layer!r} takes {want}: load it with the model it was fitted on")
        split.extra_tokens_ = tensors["split.extra_tokens"].to(split.device)
    p = manifest["params"]
    ex = cls(split, method=p["method"], n_concepts=p["n_concepts"], importance=p["importance"],
             seed=p["seed"],
             method_params=p.get("method_params"), importance_params=p.get("importance_params"))
    dcls = decompose.get(p["method"])
    try:
        d = dcls(**manifest["decomposition_params"])
        d.load_state_tensors({k.split(".", 1)[1]: v for k, v in tensors.items()
                              if k.startswith("decomposition.")})
    except (TypeError, ValueError, ConceptLensError) as exc:
        raise SavedFileError(f"{str(path)!r}: the saved {p['method']} cannot be rebuilt ({exc})") from exc
    if dcls.uses_head:
        d.set_head(split.h)
    with torch.no_grad():
        n_out = int(split.h(torch.zeros(1, *split.activation_shape)).shape[-1])
    if int(manifest["target"]) >= n_out:
        raise SavedFileError(f"{str(path)!r}: target class {manifest['target']} is out of range for this "
                             f"model ({n_out} classes): load it with the model it was fitted on")
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
    """Parse and validate a saved explainer: ``(manifest, tensors)``.

    Order of the checks: the file is readable safetensors; the manifest text is at most
    :data:`MAX_MANIFEST` characters and names a schema this version reads; the digest over the raw text and
    the tensors matches (before the JSON is parsed, so a hostile manifest is never parsed); then the
    manifest and the tensors are validated (:func:`validate`).

    Raises
    ------
    SavedFileError
        On any corruption, tampering or inconsistency, saying what is wrong.
    """
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
    text = meta.get("conceptlens")
    if not isinstance(text, str):
        raise SavedFileError(f"{str(p)!r} has no conceptlens manifest; was it written by "
                             "ConceptExplainer.save?")
    if len(text) > MAX_MANIFEST:
        raise SavedFileError(f"{str(p)!r}: the manifest is {len(text):,} characters (at most "
                             f"{MAX_MANIFEST:,}); refusing to read it")
    head = re.match(r'\{"schema": "([^"\\]{0,100})"', text)
    schema = head.group(1) if head else None
    if schema not in READS:
        raise SavedFileError(f"{str(p)!r} has schema {schema!r}; this version reads {', '.join(READS)}")
    digest = meta.get("conceptlens.sha256")
    if schema == SCHEMA and digest != _digest_text(text, tensors):
        raise _modified(p)
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SavedFileError(f"{str(p)!r} has no valid conceptlens manifest ({type(exc).__name__})") from exc
    if not isinstance(manifest, dict):
        raise SavedFileError(f"{str(p)!r}: the manifest is a {type(manifest).__name__}, not an object")
    if schema != SCHEMA and manifest.get("sha256") != _digest(tensors, manifest):  # files of schema 1
        raise _modified(p)
    validate(manifest, tensors, p)
    return manifest, tensors


def _modified(p: Path) -> SavedFileError:
    return SavedFileError(f"{str(p)!r} was modified after it was saved (checksum mismatch); "
                          "refusing to load it")


def _fail(p: Path, what: str) -> SavedFileError:
    return SavedFileError(f"{str(p)!r}: {what}; the file is not one ConceptExplainer.save wrote — fit and "
                          "save it again")


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def validate(manifest: dict[str, Any], tensors: dict[str, torch.Tensor], p: Path) -> None:
    """Check a parsed manifest and its tensors against each other (types, names, shapes, dtypes, ranges).

    The decomposition's tensors may only fill the fields its class declares (``state_fields``); a method
    that needs non-negative activations must have a non-negative bank; every tensor is finite.
    """
    from conceptlens import importance

    for key, typ in (("model", str), ("layer", str), ("params", dict), ("importance_method", str),
                     ("decomposition_params", dict)):
        if not isinstance(manifest.get(key), typ):
            raise _fail(p, f"the manifest's {key!r} is {manifest.get(key)!r}")
    params = manifest["params"]
    method = params.get("method")
    if not isinstance(method, str) or method not in decompose.available():
        raise _fail(p, f"unknown method {method!r} (known: {', '.join(decompose.available())})")
    dcls = decompose.get(method)
    k = params.get("n_concepts")
    if not _is_int(k, 1) or not _is_int(params.get("seed"), 0) or not _is_int(manifest.get("target"), 0):
        raise _fail(p, "n_concepts, seed and target must be integers (n_concepts ≥ 1, the others ≥ 0)")
    imp = params.get("importance")
    if not isinstance(imp, str) or (imp != "auto" and imp not in importance.available()):
        raise _fail(p, f"unknown importance {imp!r}")
    if manifest["importance_method"] not in importance.available():
        raise _fail(p, f"unknown importance method {manifest['importance_method']!r}")
    for key in ("method_params", "importance_params"):
        if params.get(key) is not None and not isinstance(params[key], dict):
            raise _fail(p, f"{key} is {params[key]!r}")
    accepted = set(inspect.signature(dcls.__init__).parameters) - {"self"}
    unknown = sorted(set(manifest["decomposition_params"]) - accepted)
    if unknown:
        raise _fail(p, f"{method} has no parameter(s) {unknown}")
    fields = {f"decomposition.{f}" for f in dcls.state_fields}
    if manifest.get("signed", "keep") not in ("keep", "split"):
        raise _fail(p, f"the manifest's 'signed' is {manifest.get('signed')!r}")
    allowed = fields | {"importance", "weights", "fit_scores", "fit_logits", "importance_ci_low",
                        "importance_ci_high", "split.extra_tokens"} | {
        f"crops.{n}" for n in ("image_index", "boxes", "scores", "predicted")}
    extra = sorted(n for n in tensors if n not in allowed and not n.startswith("tree."))
    if extra:
        raise _fail(p, f"unexpected tensors {extra[:5]}")
    missing = sorted(n for n in ("importance", "weights", "fit_scores", "fit_logits") if n not in tensors)
    if missing or not any(n in tensors for n in fields):
        raise _fail(p, f"missing tensors {missing or sorted(fields)}")
    for name, t in tensors.items():
        integral = name in ("crops.image_index", "crops.boxes", "crops.predicted") \
            or name.endswith(".crop_ids")
        floating = not integral and not name.endswith(".prototypes")  # prototypes: pictures (uint8 or float)
        wrong_int = integral and (t.is_floating_point() or t.dtype == torch.bool)
        if wrong_int or (floating and not t.is_floating_point()):
            raise _fail(p, f"tensor {name!r} has dtype {t.dtype}, expected "
                           f"{'integers' if integral else 'floating point'}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _fail(p, f"tensor {name!r} holds NaN or Inf")
    crops = {n: tensors[f"crops.{n}"] for n in ("image_index", "boxes", "scores", "predicted")
             if f"crops.{n}" in tensors}
    if crops:
        m = crops["image_index"].shape[0] if "image_index" in crops else -1
        want = {"image_index": (m,), "boxes": (m, 4), "scores": (m, k), "predicted": (m,)}
        if len(crops) != 4 or any(tuple(crops[n].shape) != want[n] for n in want):
            raise _fail(p, "the saved crops are incomplete or their shapes disagree "
                           f"({ {n: tuple(v.shape) for n, v in crops.items()} })")
    shapes = {"importance": (k,), "weights": (k,), "importance_ci_low": (k,), "importance_ci_high": (k,)}
    for name, shape in shapes.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise _fail(p, f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")
    n_fit = tensors["fit_logits"].shape[0] if tensors["fit_logits"].ndim == 1 else -1
    if tuple(tensors["fit_scores"].shape) != (n_fit, k):
        raise _fail(p, f"fit_scores {tuple(tensors['fit_scores'].shape)} and fit_logits "
                       f"{tuple(tensors['fit_logits'].shape)} disagree with k = {k}")
    bank = tensors.get("decomposition.components_")
    if bank is not None:
        if bank.ndim != 2 or bank.shape[0] != k:
            raise _fail(p, f"the bank has shape {tuple(bank.shape)}, expected [{k}, C]")
        if dcls.nonnegative and bool((bank < 0).any()):
            raise _fail(p, f"the {method} bank has negative entries ({method} banks are non-negative)")
