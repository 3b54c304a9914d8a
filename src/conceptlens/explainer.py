"""ConceptExplainer: the one module that knows the whole pipeline (data → split → decompose → importance).

Notation: ``x [N,3,H,W]``, ``A = g(x) [N,h,w,C]``, ``W [k,C]`` the concept bank, ``U [N,h,w,k]`` the
coefficients, ``c`` the target class. A concept's *score* on an image is the spatial mean of its
coefficient map; its *weight* is ``∂logit_c/∂score`` (ICE); its *contribution* is ``score × weight``.
For a GAP + linear head ``Σ contributions + residual + bias = logit_c`` exactly. An *edit* removes or
rescales concepts in ``A`` (``A'`` edited activations, ``h(A')`` counterfactual logits; see
:meth:`ConceptExplainer.edit`).

Saved explainers are one safetensors file: the tensors plus a JSON manifest in the header (schema,
library versions, model name, layer, method, parameters, a SHA-256 of the tensors). Loading parses data
only; nothing is unpickled or executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlens import decompose
from conceptlens import importance as importance_mod
from conceptlens.attribution.implicit import implicit_maps, upsample_maps
from conceptlens.decompose import craft as _craft  # noqa: F401 - registers method="craft"
from conceptlens.errors import (
    ActivationError,
    ConceptLensError,
    ImageError,
    NotFittedError,
    ParameterError,
    SavedFileError,
    TargetError,
    nearest,
)
from conceptlens.importance.base import Context, Importance, concept_directions
from conceptlens.importance.linear import scores as spatial_scores
from conceptlens.io.crops import CropSet, crop_activations
from conceptlens.split.model_split import ModelSplit

__all__ = ["ConceptExplainer", "LocalExplanation", "EditResult", "ConceptEditHead", "resolve_target",
           "upsample_maps", "SCHEMA"]

SCHEMA = "conceptlens.explainer/1"


@dataclass(frozen=True)
class LocalExplanation:
    """How the concepts make up one class's logit on each image.

    Attributes
    ----------
    scores : torch.Tensor
        ``[n, k]`` concept scores (spatial mean of ``U``).
    weights : torch.Tensor
        ``[k]`` concept weights for the target class.
    contributions : torch.Tensor
        ``[n, k]`` ``scores × weights``.
    residual : torch.Tensor
        ``[n]`` what the concepts miss: ``logit − bias − Σ contributions`` (for a GAP + linear head it
        is computed independently as ``mean_hw(A − decode(U)) · w_c``).
    bias : float
        The head's bias for the class plus the decode offset's share (PCA's mean).
    logits : torch.Tensor
        ``[n]`` the model's target logit.
    maps : torch.Tensor
        ``[n, k, H, W]`` concept maps at the image's resolution.
    target : int
        The class explained.
    """

    scores: torch.Tensor
    weights: torch.Tensor
    contributions: torch.Tensor
    residual: torch.Tensor
    bias: float
    logits: torch.Tensor
    maps: torch.Tensor
    target: int


@dataclass(frozen=True)
class EditResult:
    """The model's logits before and after a concept edit (a counterfactual: "without concept i, …").

    Attributes
    ----------
    logits : torch.Tensor
        ``[N, n_classes]`` logits ``h(A')`` of the edited activations.
    original : torch.Tensor
        ``[N, n_classes]`` logits ``h(A)`` of the unedited activations.
    delta_target : torch.Tensor
        ``[N]`` change of the target logit, ``logits[:, target] − original[:, target]`` (negative: the
        edit lowers the class's score).
    target : int
        The explainer's target class.
    removed : dict[int, float]
        Concept → the fraction of its component taken away (``1`` removed, ``0.5`` halved, ``−1``
        doubled); concepts left as they are do not appear.
    """

    logits: torch.Tensor
    original: torch.Tensor
    delta_target: torch.Tensor
    target: int
    removed: dict[int, float]

    @property
    def delta(self) -> torch.Tensor:
        """``[N, n_classes]`` change of every logit."""
        return self.logits - self.original

    @property
    def flipped(self) -> torch.Tensor:
        """``[N]`` bool, True where the edit changes the model's top-1 class."""
        return self.logits.argmax(1) != self.original.argmax(1)


class ConceptEditHead(torch.nn.Module):
    """A head that sees activations with concepts' parts taken out: ``h'(A) = h(A − Σ_i f_i U_i ⊗ D_i)``.

    The counterpart of EDDP's edit for reconstruction methods (NMF, PCA, k-means, CRAFT, FACE): concept
    ``i``'s share of the reconstruction, its code ``U[..., i] = encode(A)[..., i]`` times its direction
    ``D_i`` (the row of the bank that ``decode`` adds per unit of code), is subtracted from the
    activations, scaled by ``f_i``; the residual ``A − decode(U)`` is kept. Removing every concept of an
    NMF therefore leaves exactly the residual. Nothing is clamped at 0: a clamp would break that
    invariant, and the head of a post-ReLU layer is defined (if out of distribution) on negative inputs.
    Rows where a concept's code is 0 are not changed by its removal.

    Parameters
    ----------
    head : callable
        ``h``: activations ``[B, ..., C]`` → logits ``[B, K]`` (e.g. ``split.h``).
    decomposition : Decomposition
        A fitted decomposition with an affine ``decode`` (kept by reference: its ``encode`` gives ``U``).
    removed : dict[int, float]
        Concept index → fraction ``f_i`` of its part to subtract (``1`` removes it, ``−1`` doubles it).
    """

    def __init__(self, head: Any, decomposition: Any, removed: dict[int, float]) -> None:
        super().__init__()
        if not callable(head):
            raise ParameterError(f"head must be callable (activations → logits), got {type(head).__name__}")
        self.head = head
        self.decomposition = decomposition
        D, _ = concept_directions(decomposition)
        ids = sorted(removed)
        self.register_buffer("index", torch.tensor(ids, dtype=torch.long, device=D.device))
        self.register_buffer("directions", D[self.index].detach().clone())  # [r, C]
        self.register_buffer("factors", torch.tensor([removed[i] for i in ids], dtype=D.dtype,
                                                     device=D.device))  # [r]

    def edit(self, A: torch.Tensor) -> torch.Tensor:
        """The edited activations ``A' [..., C]`` of ``A [..., C]`` (same shape, dtype and device)."""
        if self.index.numel() == 0:
            return A
        U = self.decomposition.encode(A)[..., self.index.to(A.device)]  # [..., r]
        part = (U * self.factors.to(U.device, U.dtype)) @ self.directions.to(U.device, U.dtype)
        return A - part.to(A.dtype)

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of the edited activations."""
        return self.head(self.edit(A))


def resolve_target(target: int | str, classes: list[str], n_outputs: int) -> int:
    """Class index from an index or a class name (case-insensitive); TargetError otherwise."""
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index or name, got {target!r}")
    if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
        t = int(target)
        if not 0 <= t < n_outputs:
            raise TargetError(f"target class {t} is out of range: the model has {n_outputs} classes "
                              f"(0–{n_outputs - 1})")
        return t
    if isinstance(target, str):
        low = [c.lower() for c in classes]
        if target.lower() in low:
            return low.index(target.lower())
        hint = nearest(target.lower(), low)
        raise TargetError(
            f"unknown class name {target!r}"
            + (f"; did you mean {', '.join(repr(classes[low.index(h)]) for h in hint)}?" if hint else "")
            + " (or pass the class index)"
        )
    raise TargetError(f"target must be a class index or name, got {type(target).__name__}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; saved files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


class ConceptExplainer:
    """Find concepts in a layer, weigh them for a class, and explain images with them (ICE and peers).

    Parameters
    ----------
    split
        A :class:`~conceptlens.split.model_split.ModelSplit` (or an ``nn.Module``, cut at ``layer="auto"``).
    method
        A registered decomposition: ``"nmf"`` (default), ``"pca"``, ``"kmeans"``, … (see
        ``conceptlens.decompose.available()``).
    n_concepts
        ``k``, the number of concepts.
    importance
        ``"auto"`` (closed form for a GAP + linear head, else autograd), ``"linear"``, ``"gradient"``,
        ``"sobol"``, … (see ``conceptlens.importance.available()``).
    seed
        Seed of every random step.
    method_params
        Extra keyword arguments for the decomposition (e.g. ``{"max_iter": 400}``).
    importance_params
        Extra keyword arguments for the importance estimator (e.g. ``{"n_designs": 64}``).
    progress
        Progress bars (None: only on a terminal).

    Attributes
    ----------
    concepts_ : torch.Tensor
        ``[k, C]`` the concept bank ``W``.
    importance_ : torch.Tensor
        ``[k]`` global importance for the target.
    weights_ : torch.Tensor
        ``[k]`` ICE concept weights for the target.
    target_ : int
    decomposition_ : Decomposition
    fit_scores_ : torch.Tensor
        ``[N, k]`` scores of the fit images (prototypes are the top-scoring ones).
    crops_ : CropSet | None
        For methods fitted on crops (``"craft"``): each crop's image, box, scores ``[M, k]`` and the model's
        class on it; for a recursive fit of another method, the fit images as whole-image crops; else None.
    tree_ : ConceptNode | None
        The concept tree of ``fit(..., recursive=True)`` (see :mod:`conceptlens.recursive`), else None.
    """

    def __init__(
        self,
        split: ModelSplit | Any,
        method: str = "nmf",
        n_concepts: int = 10,
        importance: str = "auto",
        seed: int = 0,
        *,
        method_params: dict[str, Any] | None = None,
        importance_params: dict[str, Any] | None = None,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(split, ModelSplit):
            import torch.nn as nn

            if isinstance(split, nn.Module):
                split = ModelSplit(split, "auto", progress=progress)
            else:
                raise ParameterError("split must be a ModelSplit or an nn.Module, got "
                                     f"{type(split).__name__}")
        self.split = split
        self.method = method.lower()
        decompose.get(self.method)  # validate the name early
        if importance != "auto":
            importance_mod.get(importance)
        if not isinstance(n_concepts, int) or isinstance(n_concepts, bool) or n_concepts < 1:
            raise ParameterError(f"n_concepts must be a positive integer, got {n_concepts!r}")
        C = split.activation_shape[-1]
        if n_concepts > C:
            raise ParameterError(
                f"n_concepts={n_concepts} is larger than the {C} channels of layer {split.layer!r}; "
                f"use at most {C}"
            )
        self.n_concepts = n_concepts
        self.importance = importance
        self.seed = seed
        self.method_params = dict(method_params or {})
        self.importance_params = dict(importance_params or {})
        self.progress = progress
        self.crops_: CropSet | None = None
        self.tree_: Any = None

    # ------------------------------------------------------------------ properties
    def _fitted(self, what: str) -> None:
        if getattr(self, "decomposition_", None) is None:
            raise NotFittedError(f"ConceptExplainer.{what} needs a fitted explainer: "
                                 "call .fit(x, target) first")

    @property
    def concepts_(self) -> torch.Tensor:
        """``[k, C]`` the concept bank."""
        self._fitted("concepts_")
        return self.decomposition_.components_

    @property
    def classes(self) -> list[str]:
        """Class names from the model's preset (may be empty)."""
        return list(getattr(self.split.preset, "classes", []) or [])

    @property
    def target_name_(self) -> str:
        """Name of the fitted target class (its index when the model has no names)."""
        self._fitted("target_name_")
        cls = self.classes
        return cls[self.target_] if self.target_ < len(cls) else str(self.target_)

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-friendly)."""
        return {
            "method": self.method,
            "n_concepts": self.n_concepts,
            "importance": self.importance,
            "seed": self.seed,
            "method_params": self.method_params,
            "importance_params": self.importance_params,
        }

    # ------------------------------------------------------------------ fit
    def _check_images(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ImageError(
                f"expected images as a tensor [N,3,H,W] with N ≥ 1, got {shape}; "
                "load them with cl.data.load_images(path, preset=model.preset)"
            )

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """``g(x)``: activations ``[N,h,w,C]`` at the split's layer, checked for NaN/Inf."""
        self._check_images(x)
        A = self.split.g(x, progress=self.progress)
        if not torch.isfinite(A).all():
            raise ActivationError(
                f"activations at layer {self.split.layer!r} contain NaN/Inf; check the images' "
                "normalisation (cl.data.load_images with the model's preset)"
            )
        return A

    def fit(
        self,
        x: torch.Tensor,
        target: int | str | None = None,
        *,
        A: torch.Tensor | None = None,
        recursive: bool = False,
        layers: Sequence[str] | str | None = None,
        recursive_params: dict[str, Any] | None = None,
    ) -> ConceptExplainer:
        """Fit the concept bank on the images of a class and weigh the concepts for ``target``.

        Methods with ``fit_on = "crops"`` (``"craft"``) fit the bank on crops of ``x`` (one spatially
        averaged row per crop; ``crops_`` keeps them); every method then encodes ``x`` per position.

        Parameters
        ----------
        x
            ``[N,3,H,W]`` normalised images (ideally of the target class).
        target
            Class index or name; None = the class the model predicts most often on ``x``.
        A
            Precomputed activations ``g(x)`` of the images (skips that forward pass, e.g. when comparing
            methods; the crops of a crop-fitted method are always computed).
        recursive
            Also grow CRAFT's concept tree ``tree_``: ambiguous concepts are split into sub-concepts at
            ``layers`` (see :mod:`conceptlens.recursive` for the rule).
        layers
            Earlier layer(s) for the recursion, deep to shallow (a name, ``"L1,L2"`` or a list).
        recursive_params
            Options of the recursion (``n_top``, ``n_children``, ``threshold``, ``max_split``,
            ``importance``, …; see :func:`conceptlens.recursive.build_tree`).

        Returns
        -------
        ConceptExplainer
            self, with ``concepts_``, ``importance_``, ``weights_`` … set.
        """
        self._check_images(x)
        if recursive and not layers:
            raise ParameterError("recursive=True needs layers=[an earlier layer name, …] to split concepts "
                                 "at (see `conceptlens layers` or split.layers())")
        if layers and not recursive:
            raise ParameterError("layers=… is only used with recursive=True")
        A = self.activations(x) if A is None else A
        with torch.no_grad():
            logits = self.split.h(A)
        n_out = logits.shape[1]
        if target is None:
            target = int(torch.bincount(logits.argmax(1), minlength=n_out).argmax())
        self.target_ = resolve_target(target, self.classes, n_out)
        cls = decompose.get(self.method)
        if getattr(cls, "nonnegative", False) and float(A.min()) < 0:
            raise ActivationError(
                f"method {self.method!r} needs non-negative activations, but layer {self.split.layer!r} has "
                f"values down to {float(A.min()):.4g}. Choose a layer after a ReLU-like activation "
                f"(layer='auto' picks the last one) or use method='pca' (allows negative values)"
            )
        d = cls(n_concepts=self.n_concepts, seed=self.seed, **self.method_params)
        if hasattr(d, "set_head"):  # methods that use the classifier (FACE's KL term, EDDP's alignment)
            d.set_head(self.split.h)
        self.crops_ = None
        self.tree_ = None
        if getattr(cls, "fit_on", None) == "crops":
            rows, image_index, boxes, predicted = crop_activations(
                self.split, x, getattr(d, "patch_size", 64), getattr(d, "stride", None),
                progress=self.progress)
            d.fit(rows)
        else:
            d.fit(A)
        # the same memory layout as after save/load, so that reloaded explainers give identical numbers
        d.load_state_tensors({k: v.detach().clone() for k, v in d.state_tensors().items()})
        self.decomposition_ = d
        U = d.encode(A)
        self.fit_scores_ = spatial_scores(U)
        self.fit_logits_ = logits[:, self.target_]
        imp = self._importance(U)
        self.importance_result_ = imp
        self.importance_ = imp.values
        self.weights_ = imp.weights
        if getattr(cls, "fit_on", None) == "crops":
            self.crops_ = CropSet(image_index=image_index, boxes=boxes, scores=d.encode(rows),
                                  predicted=predicted)
        elif recursive:  # the recursion works on crops: here, each fit image is one crop
            H, W = int(x.shape[-2]), int(x.shape[-1])
            self.crops_ = CropSet(image_index=torch.arange(x.shape[0]),
                                  boxes=torch.tensor([[0, 0, H, W]]).expand(x.shape[0], 4).clone(),
                                  scores=self.fit_scores_.clone(), predicted=logits.argmax(1).cpu())
        if recursive:
            from conceptlens.recursive import build_tree

            self.tree_ = build_tree(self, x, layers or [], recursive_params)
        return self

    def _importance(self, U: torch.Tensor) -> Importance:
        name = self.importance
        linear = self.split.linear_head() is not None
        if name == "auto":
            name = getattr(decompose.get(self.method), "default_importance", None) or (
                "linear" if linear else "gradient")
        ctx = Context(U=U, decomposition=self.decomposition_, split=self.split, target=self.target_,
                      seed=self.seed, progress=self.progress, options=self.importance_params)
        return importance_mod.get(name)(ctx)

    # ------------------------------------------------------------------ explain
    def encode(self, A: torch.Tensor) -> torch.Tensor:
        """Coefficients ``U [N, ..., k]`` of activations ``A [N, ..., C]``."""
        self._fitted("encode")
        return self.decomposition_.encode(A)

    def approximate_logits(self, A: torch.Tensor) -> torch.Tensor:
        """``F̂ = h(decode(encode(A)))``: logits ``[N, K]`` of the model seen through the concepts."""
        self._fitted("approximate_logits")
        with torch.no_grad():
            return self.split.h(self.decomposition_.decode(self.decomposition_.encode(A)))

    def explain(
        self, x: torch.Tensor, *, maps: str = "upsample", A: torch.Tensor | None = None
    ) -> LocalExplanation:
        """Explain the target logit on each image with the concepts.

        Parameters
        ----------
        x
            ``[n,3,H,W]`` normalised images.
        maps
            ``"upsample"`` (the coefficient maps, bilinearly upsampled to ``H×W``), ``"implicit"`` (CRAFT's
            concept attribution maps by implicit differentiation of the NNLS codes, a Grad-CAM of each
            concept at the layer; NMF-like methods only, see
            :mod:`~conceptlens.attribution.implicit`) or ``"none"``.
        A
            Precomputed ``g(x)``.

        Returns
        -------
        LocalExplanation
        """
        self._fitted("explain")
        self._check_images(x)
        if maps not in ("upsample", "implicit", "none"):
            raise ParameterError(f"maps must be 'upsample', 'implicit' or 'none', got {maps!r}")
        A = self.activations(x) if A is None else A
        d = self.decomposition_
        U = d.encode(A)
        s = spatial_scores(U)
        w = self.weights_
        contrib = s * w
        with torch.no_grad():
            logits = self.split.h(A)[:, self.target_]
        head = self.split.linear_head()
        D, offset = concept_directions(d)
        if head is not None:
            wc = head.weight[self.target_].to(A.dtype)
            bias = float(head.bias[self.target_]) + float(offset @ wc)
            R = A - d.decode(U)
            residual = spatial_scores(R) @ wc
        else:
            with torch.no_grad():
                zero = offset.expand(*A.shape[:-1], A.shape[-1]).contiguous()
                bias = float(self.split.h(zero[:1])[0, self.target_])
            residual = logits - bias - contrib.sum(1)
        if maps == "upsample":
            m = upsample_maps(U, tuple(x.shape[-2:]))
        elif maps == "implicit":
            m = implicit_maps(self.split, d, x, A=A)
        else:
            m = torch.zeros(U.shape[0], U.shape[-1], 0, 0)
        return LocalExplanation(scores=s, weights=w, contributions=contrib, residual=residual, bias=bias,
                                logits=logits, maps=m, target=self.target_)

    # ------------------------------------------------------------------ edits
    def _removed(
        self, remove: int | Sequence[int] | None, scale: Mapping[int, float] | None
    ) -> dict[int, float]:
        """Validated ``{concept: fraction removed}`` of ``remove`` and ``scale`` (untouched ones left out)."""
        k = int(self.concepts_.shape[0])

        def index(i: Any) -> int:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < k:
                raise ParameterError(
                    f"concept index {i!r} is out of range: the explainer has {k} concepts, valid indices are "
                    f"0–{k - 1} (ex.importance_.argsort(descending=True) lists them by importance)"
                )
            return int(i)

        if remove is None:
            remove = []
        elif isinstance(remove, (torch.Tensor, np.ndarray)):
            remove = remove.reshape(-1).tolist()
        elif isinstance(remove, (int, np.integer)) and not isinstance(remove, bool):
            remove = [int(remove)]
        elif isinstance(remove, (str, bytes)) or not isinstance(remove, Sequence):
            raise ParameterError(
                f"remove must be a concept index or a list of them, got {type(remove).__name__}")
        if scale is None:
            scale = {}
        elif not isinstance(scale, Mapping):
            raise ParameterError(
                f"scale must be a dict {{concept index: factor}}, got {type(scale).__name__}")
        out: dict[int, float] = {}
        for i in remove:
            out[index(i)] = 1.0
        for i, s in scale.items():
            j = index(i)
            if j in out:
                raise ParameterError(f"concept {j} is both in remove and in scale; give it in one of them "
                                     "(scale={j: 0} removes it)")
            if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(float(s)):
                raise ParameterError(f"scale for concept {j} must be a finite number (0 removes the concept, "
                                     f"1 keeps it, 2 doubles it), got {s!r}")
            out[j] = 1.0 - float(s)
        # a factor of exactly 1 keeps the concept: leaving it out makes the no-op edit exactly the identity
        return {i: f for i, f in sorted(out.items()) if f != 0.0}

    def _edit_head(self, removed: dict[int, float]) -> torch.nn.Module:
        from conceptlens.decompose.eddp import EDDP, UnlearnedHead

        d = self.decomposition_
        if isinstance(d, EDDP):
            # EDDP's own edit: its encoding directions weighted by the detectors (see remove_concepts)
            return UnlearnedHead(self.split.h, d, [], removed)
        return ConceptEditHead(self.split.h, d, removed)

    def edit_activations(
        self,
        A: torch.Tensor,
        remove: int | Sequence[int] | None = None,
        scale: Mapping[int, float] | None = None,
    ) -> torch.Tensor:
        """Activations with concepts removed or rescaled (see :meth:`edit`).

        Parameters
        ----------
        A
            ``[N, h, w, C]`` activations ``g(x)``.
        remove, scale
            As in :meth:`edit`.

        Returns
        -------
        torch.Tensor
            ``[N, h, w, C]`` edited activations ``A'``.
        """
        self._fitted("edit_activations")
        removed = self._removed(remove, scale)
        if not removed:
            return A
        with torch.no_grad():
            return self._edit_head(removed).edit(A)  # type: ignore[operator]

    def edit(
        self,
        x: torch.Tensor | None = None,
        remove: int | Sequence[int] | None = None,
        scale: Mapping[int, float] | None = None,
        *,
        A: torch.Tensor | None = None,
    ) -> EditResult:
        """Counterfactual logits: the model's output with concepts taken out of (or scaled in) the layer.

        For ``method="eddp"`` concept ``i``'s *encoding direction* ``s_i`` is subtracted at every position
        in proportion to its detector's response, ``A' = ReLU(A − Σ_i f_i σ(w_iᵀA − b_i) s_i)`` (the
        paper's edit, :func:`conceptlens.decompose.eddp.remove_concepts`; the ReLU only for layers that
        were ≥ 0 at fit). For every other method the natural counterpart: concept ``i``'s part of the
        reconstruction is subtracted, ``A' = A − Σ_i f_i U[..., i] ⊗ D_i`` (``U = encode(A)``, ``D_i`` the
        concept's direction, i.e. ``W[i]``), keeping the residual ``A − decode(U)``; no clamp (see
        :class:`ConceptEditHead`). ``f_i = 1`` for the concepts in ``remove`` and ``1 − s`` for
        ``scale={i: s}`` (``s = 0`` removes, ``s = 1`` keeps, ``s = 2`` doubles the concept).

        Parameters
        ----------
        x
            ``[N, 3, H, W]`` normalised images (not needed when ``A`` is given).
        remove
            Concept index or indices to remove.
        scale
            ``{concept: s}``: keep ``s`` times the concept's component instead.
        A
            Precomputed activations ``g(x)`` ``[N, h, w, C]``.

        Returns
        -------
        EditResult
            ``logits`` and ``original`` ``[N, n_classes]``, ``delta_target`` ``[N]``, ``flipped`` ``[N]``.

        Raises
        ------
        NotFittedError
            Before :meth:`fit`.
        ParameterError
            A concept index outside ``0 … k−1``, a non-finite scale, a concept both removed and scaled.
        """
        self._fitted("edit")
        removed = self._removed(remove, scale)
        if A is None:
            if x is None:
                raise ImageError("edit needs images x [N,3,H,W] or their activations A=g(x)")
            A = self.activations(x)
        with torch.no_grad():
            original = self.split.h(A)
            logits = self._edit_head(removed)(A) if removed else original.clone()
        t = self.target_
        return EditResult(logits=logits, original=original, delta_target=logits[:, t] - original[:, t],
                          target=t, removed=removed)

    def unlearn(self, concepts: int | Sequence[int]) -> torch.nn.Module:
        """A head ``h'`` (activations → logits) that ignores the given concept(s), without retraining.

        ``h'(A) = h(A')`` with the concepts removed from ``A`` as in :meth:`edit` (EDDP: the paper's
        correction of a spurious concept by projecting its encoding direction out; other methods: the
        concept's part of the reconstruction subtracted). Activations where the concepts are absent
        (detector silent, code 0) give the original logits. The head captures the current bank: refitting
        the explainer does not change it.

        Parameters
        ----------
        concepts
            A concept index or a list of them.

        Returns
        -------
        torch.nn.Module
            ``h'``: ``[B, h, w, C]`` → logits ``[B, n_classes]``; ``h'.edit(A)`` returns the edited
            activations. (:class:`~conceptlens.decompose.eddp.UnlearnedHead` for EDDP,
            :class:`ConceptEditHead` otherwise.) Use it as ``h'(split.g(x))``.
        """
        self._fitted("unlearn")
        return self._edit_head(self._removed(concepts, None))

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted explainer to one safetensors file (atomic; no pickle). Returns the path."""
        self._fitted("save")
        from safetensors.torch import save as st_save

        tensors = {f"decomposition.{k}": v.detach().cpu().contiguous()
                   for k, v in self.decomposition_.state_tensors().items()}
        imp = self.importance_result_
        tensors.update({"importance": imp.values.detach().cpu().contiguous(),
                        "weights": imp.weights.detach().cpu().contiguous(),
                        "fit_scores": self.fit_scores_.detach().cpu().contiguous(),
                        "fit_logits": self.fit_logits_.detach().cpu().contiguous()})
        if imp.ci_low is not None and imp.ci_high is not None:
            tensors["importance_ci_low"] = imp.ci_low.detach().cpu().contiguous()
            tensors["importance_ci_high"] = imp.ci_high.detach().cpu().contiguous()
        crops = getattr(self, "crops_", None)
        if crops is not None:
            for name in ("image_index", "boxes", "scores", "predicted"):
                tensors[f"crops.{name}"] = getattr(crops, name).detach().cpu().contiguous()
        tree_structure = None
        if getattr(self, "tree_", None) is not None:
            from conceptlens.recursive import tree_state

            tree_structure, tree_tensors = tree_state(self.tree_)
            tensors.update(tree_tensors)
        import safetensors

        from conceptlens._version import __version__

        manifest = {
            "schema": SCHEMA,
            "versions": {"conceptlens": __version__, "torch": torch.__version__,
                         "safetensors": getattr(safetensors, "__version__", "?")},
            "model": getattr(self.split.model, "cl_name", type(self.split.model).__name__),
            "layer": self.split.layer,
            "params": self.get_params(),
            "decomposition_params": _jsonable(self.decomposition_.get_params()),
            "target": self.target_,
            "importance_method": imp.method,
        }
        if tree_structure is not None:
            manifest["tree"] = tree_structure
        manifest["sha256"] = _digest(tensors, manifest)
        data = st_save(tensors, metadata={"conceptlens": json.dumps(manifest)})
        p = Path(path)
        _atomic_write(p, data)
        return p

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], model: Any = None, *, split: ModelSplit | None = None
    ) -> ConceptExplainer:
        """Load an explainer written by :meth:`save`.

        Parameters
        ----------
        path
            The saved file.
        model
            The model it was fitted on (``nn.Module``), or a name for :func:`conceptlens.io.models.load`;
            None loads the model named in the manifest.
        split
            Use this split instead of cutting ``model`` at the saved layer.
        """
        manifest, tensors = read_saved(path)
        if split is None:
            from conceptlens.io import models as models

            if model is None or isinstance(model, str):
                model = models.load(model or manifest["model"])
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
        if hasattr(d, "set_head"):
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


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(i, (int, float, str, bool)) for i in v):
            out[k] = list(v)
    return out


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

