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

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from conceptlens import decompose, persistence
from conceptlens import importance as importance_mod
from conceptlens.attribution.implicit import implicit_maps
from conceptlens.attribution.maps import upsample_maps
from conceptlens.edit import ConceptEditHead, EditResult, edit_head, removed_fractions
from conceptlens.errors import (
    ActivationError,
    ImageError,
    NotFittedError,
    ParameterError,
)
from conceptlens.importance.base import Context, Importance, concept_directions
from conceptlens.importance.linear import scores as spatial_scores
from conceptlens.io.crops import CropSet, crop_activations
from conceptlens.split.model_split import ModelSplit
from conceptlens.split.sites import resolve_target
from conceptlens.stages import earlier_stages
from conceptlens.stream import check_sign, explain_source, fit_source
from conceptlens.summary import ExplainerDisplay, ExplanationDisplay, keep_fit_summary

__all__ = ["ConceptExplainer", "LocalExplanation", "EditResult", "ConceptEditHead", "resolve_target",
           "upsample_maps", "SCHEMA", "read_saved"]

SCHEMA = persistence.SCHEMA
read_saved = persistence.read_saved  # the old home of the manifest reader


@dataclass(frozen=True)
class LocalExplanation(ExplanationDisplay):
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
    exact : bool
        True when the head after the layer is GAP + linear (checked on activations of both signs at the
        layer's scale): the weights are exact and the residual is computed independently, so the sum is an
        identity. False otherwise: the weights are autograd directional derivatives (TCAV-style) and the
        residual is, by construction, what they leave of the logit.
    """

    scores: torch.Tensor
    weights: torch.Tensor
    contributions: torch.Tensor
    residual: torch.Tensor
    bias: float
    logits: torch.Tensor
    maps: torch.Tensor
    target: int
    exact: bool = True


def check_images(x: Any) -> None:
    """Raise ImageError unless ``x`` is a floating-point tensor ``[N,3,H,W]`` with ``N ≥ 1``.

    Nothing is converted here (the callers keep their own ``x``): integer pixels get an error saying how to
    convert them; the channel layout is checked against the model by the split (``ModelSplit.g``), and a
    float64 / float16 ``x`` is cast there to the model's dtype."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ImageError(
            f"expected images as a tensor [N,3,H,W] with N ≥ 1, got {shape}; "
            "load them with cl.data.load_images(path, preset=model.preset)"
        )
    if not x.is_floating_point():
        raise ImageError(
            f"expected normalised float images [N,3,H,W], got dtype {x.dtype} of shape {list(x.shape)}; "
            "convert them with cl.data.load_images(x, preset=model.preset) (uint8 0–255 pixels are scaled "
            "and normalised) or x.float() if they already are"
        )


def layer_activations(split: ModelSplit, x: torch.Tensor, *, progress: bool | None = None) -> torch.Tensor:
    """``g(x)``: activations ``[N,h,w,C]`` of images ``x [N,3,H,W]`` at the split's layer, checked for
    NaN/Inf (an ImageError / ActivationError that says what to do otherwise)."""
    check_images(x)
    A = split.g(x, progress=progress)
    if not torch.isfinite(A).all():
        raise ActivationError(
            f"activations at layer {split.layer!r} contain NaN/Inf; check the images' "
            "normalisation (cl.data.load_images with the model's preset)"
        )
    return A


def _matching(A: Any, x: torch.Tensor) -> torch.Tensor:
    """``A`` when it holds the activations of exactly the images ``x`` (same count), else ParameterError."""
    if not isinstance(A, torch.Tensor) or A.ndim < 2:
        raise ParameterError(f"A must be the activations g(x) as a tensor [N, ...], got {type(A).__name__}")
    if A.shape[0] != x.shape[0]:
        raise ParameterError(f"A holds the activations of {A.shape[0]} images but x has {x.shape[0]}; "
                             "pass A = split.g(x) of the same images (or leave A out)")
    return A


class ConceptExplainer(ExplainerDisplay):
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
        for name, v in (("method", method), ("importance", importance)):
            if not isinstance(v, str):
                raise ParameterError(f"{name} must be a name (str), got {v!r}; e.g. method='nmf', "
                                     "importance='auto' (see conceptlens.decompose.available())")
        self.method = method.lower()
        dcls = decompose.get(self.method)  # validate the name early
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
        if method_params is not None and not isinstance(method_params, Mapping):
            raise ParameterError(f"method_params must be a dict, got {type(method_params).__name__}")
        if importance_params is not None and not isinstance(importance_params, Mapping):
            raise ParameterError(f"importance_params must be a dict, got {type(importance_params).__name__}")
        accepted = set(inspect.signature(dcls.__init__).parameters) - {"self", "n_concepts", "seed"}
        unknown = sorted(set(method_params or {}) - accepted)
        if unknown:
            raise ParameterError(f"method {self.method!r} has no parameter(s) {unknown}; it accepts "
                                 f"{', '.join(sorted(accepted)) or 'none'} (n_concepts and seed are the "
                                 "explainer's own)")
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
        check_images(x)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """``g(x)``: activations ``[N,h,w,C]`` at the split's layer, checked for NaN/Inf."""
        return layer_activations(self.split, x, progress=self.progress)

    def fit(
        self,
        x: torch.Tensor,
        target: int | str | None = None,
        *,
        A: torch.Tensor | None = None,
        recursive: bool = False,
        layers: Sequence[str] | str | None = None,
        recursive_params: dict[str, Any] | None = None,
        **stream: Any,
    ) -> ConceptExplainer:
        """Fit the concept bank on the images of a class and weigh the concepts for ``target``.

        Methods that declare ``fit_on = "crops"`` (CRAFT) fit the bank on crops of ``x`` (one spatially
        averaged row per crop; ``crops_`` keeps them); every method then encodes ``x`` per position.

        Parameters
        ----------
        x
            ``[N,3,H,W]`` normalised images (ideally of the target class), or a path / folder / glob / list of
            paths, an ImageFolder tree, a Dataset or a DataLoader: read in batches (see ``stream``).
        target
            Class index or name; None = the class the model predicts most often on ``x``.
        A
            Precomputed activations ``g(x)`` of the images (skips that forward pass, e.g. when comparing
            methods; the crops of a crop-fitted method are always computed).
        recursive
            Also grow CRAFT's concept tree ``tree_``: ambiguous concepts are split into sub-concepts at
            ``layers`` (see :mod:`conceptlens.recursive` for the rule).
        layers
            Earlier layer(s) for the recursion, deep to shallow (a name, ``"L1,L2"`` or a list); None:
            the outputs of the two stages before the layer (:func:`conceptlens.stages.earlier_stages`).
        recursive_params
            Options of the recursion (``n_top``, ``n_children``, ``threshold``, ``max_split``,
            ``importance``, …; see :func:`conceptlens.recursive.build_tree`).
        stream
            ``batch_size``, ``num_workers``, ``memory_budget``, ``store_dir``, ``target_images``,
            ``class_folder``: streamed extraction, see :func:`conceptlens.stream.fit_source` (a tensor too).

        Returns
        -------
        ConceptExplainer
            self, with ``concepts_``, ``importance_``, ``weights_`` … set.
        """
        if stream or not isinstance(x, torch.Tensor):
            return fit_source(self, x, target, recursive=recursive, A=A, **stream)
        self._check_images(x)
        if recursive and not layers:  # the outputs of the two stages before the layer
            layers = earlier_stages(self.split)
        if layers and not recursive:
            raise ParameterError("layers=… is only used with recursive=True")
        self.split.set_reference(x)  # token layers: h puts back these images' mean class tokens (saved too)
        A = self.activations(x) if A is None else _matching(A, x)
        with torch.no_grad():
            logits = self.split.h(A)
        n_out = logits.shape[1]
        if target is None:
            target = int(torch.bincount(logits.argmax(1), minlength=n_out).argmax())
        self.target_ = resolve_target(target, self.classes, n_out)
        cls = decompose.get(self.method)
        check_sign(self.method, self.split.layer, float(A.min()) if cls.nonnegative else 0.0)
        d = cls(n_concepts=self.n_concepts, seed=self.seed, **self.method_params)
        if cls.uses_head:  # methods that use the classifier (FACE's KL term, EDDP's alignment)
            d.set_head(self.split.h)
        self.crops_ = None
        self.tree_ = None
        if cls.fit_on == "crops":
            patch_size, stride = d.crop_params()
            rows, image_index, boxes, predicted = crop_activations(
                self.split, x, patch_size, stride, border=getattr(d, "border", "auto"),
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
        if cls.fit_on == "crops":
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
        keep_fit_summary(self, x, A, U, logits)  # the notebook card's fidelity and prototypes
        return self

    def _importance(self, U: torch.Tensor) -> Importance:
        name = self.importance
        linear = self.split.linear_head() is not None
        if name == "auto":
            name = decompose.get(self.method).default_importance or (
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
        self, x: torch.Tensor, *, maps: str = "upsample", A: torch.Tensor | None = None, **stream: Any
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
        stream
            For any image source (as in :meth:`fit`): explained batch by batch, see
            :func:`conceptlens.stream.explain_source`.

        Returns
        -------
        LocalExplanation
        """
        if stream or not isinstance(x, torch.Tensor):
            return explain_source(self, x, maps, **stream)
        self._fitted("explain")
        self._check_images(x)
        if maps not in ("upsample", "implicit", "none"):
            raise ParameterError(f"maps must be 'upsample', 'implicit' or 'none', got {maps!r}")
        A = self.activations(x) if A is None else _matching(A, x)
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
                                logits=logits, maps=m, target=self.target_, exact=head is not None)

    # ------------------------------------------------------------------ edits
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
        removed = removed_fractions(int(self.concepts_.shape[0]), remove, scale)
        if not removed:
            return A
        with torch.no_grad():
            return edit_head(self.split.h, self.decomposition_, removed).edit(A)  # type: ignore[operator]

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
        removed = removed_fractions(int(self.concepts_.shape[0]), remove, scale)
        if A is None:
            if x is None:
                raise ImageError("edit needs images x [N,3,H,W] or their activations A=g(x)")
            A = self.activations(x)
        with torch.no_grad():
            original = self.split.h(A)
            logits = edit_head(self.split.h, self.decomposition_, removed)(A) if removed else original.clone()
        t = self.target_
        return EditResult(logits=logits, original=original, delta_target=logits[:, t] - original[:, t],
                          target=t, removed=removed, classes=tuple(self.classes))

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
        return edit_head(self.split.h, self.decomposition_,
                         removed_fractions(int(self.concepts_.shape[0]), concepts, None))

    # ------------------------------------------------------------------ save / load

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted explainer to one safetensors file (atomic; no pickle). Returns the path.

        See :mod:`conceptlens.persistence` for what the file holds.
        """
        self._fitted("save")
        return persistence.save(self, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], model: Any = None, *, split: ModelSplit | None = None,
        trust_code: bool = False,
    ) -> ConceptExplainer:
        """Load an explainer written by :meth:`save`; the file's own content never runs.

        Parameters
        ----------
        path
            The saved file.
        model
            The model it was fitted on (``nn.Module``), or a name for :func:`conceptlens.io.models.load`.
            None: the model named in the manifest, only when its weights ship with conceptlens
            (``"efficientnet_lite0"``); any other model must be given here.
        split
            Use this split instead of cutting ``model`` at the saved layer.
        trust_code
            Allow a manifest's ``"package.module:factory"`` model to be imported and called (only for
            files you trust: the digest detects corruption, not forgery).
        """
        return persistence.load(cls, path, model, split=split, trust_code=trust_code)
