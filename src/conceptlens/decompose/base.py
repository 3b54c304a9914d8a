"""The Decomposition protocol and the registry of concept extractors.

Notation (fixed for every module of ``conceptlens.decompose``):

=====  ==============  ============================================================
``A``  ``[n, C]``      activations, one row per spatial position (or per image)
``W``  ``[k, C]``      the concept bank, ``components_`` (ICE's P, sklearn's ``components_``)
``U``  ``[n, k]``      concept coefficients, ``A ≈ U @ W`` (+ ``mean_`` for PCA)
=====  ==============  ============================================================

Every method accepts ``A`` as ``[n, C]`` or any ``[..., C]`` (e.g. ``[N, h, w, C]``); ``encode``
returns ``[..., k]`` with the same leading shape and ``decode`` maps ``[..., k]`` back to ``[..., C]``.
Adding a method = one new file that subclasses :class:`Decomposition` and calls :func:`register`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import torch

from conceptlens._check import lookup
from conceptlens._threads import threads
from conceptlens.errors import ActivationError, NotFittedError, ParameterError

__all__ = ["Decomposition", "register", "get", "available", "as_rows", "check_channels", "check_finite"]

_REGISTRY: dict[str, type[Decomposition]] = {}
T = TypeVar("T", bound="type[Decomposition]")


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a decomposition available as ``method=name``."""

    def deco(cls: T) -> T:
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def get(name: str) -> type[Decomposition]:
    """The decomposition class registered as ``name``; raises ParameterError listing the known ones."""
    return lookup(_REGISTRY, name, "concept method", key=name.lower())


def available() -> list[str]:
    """Names of all registered decompositions."""
    return sorted(_REGISTRY)


def as_rows(A: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Flatten ``[..., C]`` to ``[n, C]``; returns the rows and the leading shape to restore."""
    if not isinstance(A, torch.Tensor):
        raise ActivationError(f"activations must be a torch.Tensor, got {type(A).__name__}")
    if A.ndim < 1:
        raise ActivationError("activations must have at least one dimension (channels last)")
    lead = tuple(A.shape[:-1])
    return A.reshape(-1, A.shape[-1]), lead


def check_channels(rows: torch.Tensor, channels: int, fitted: str) -> None:
    """ActivationError unless ``rows [n, C]`` have the ``channels`` that ``fitted`` (a name) was fitted on."""
    if rows.shape[1] != channels:
        raise ActivationError(
            f"activations have {rows.shape[1]} channels but {fitted} was fitted on {channels}; "
            "use the same layer as at fit time"
        )


def check_finite(A: torch.Tensor, where: str = "activations") -> None:
    """Raise ActivationError when ``A`` holds NaN or Inf."""
    # One fast reduction settles the usual case: a NaN or Inf anywhere makes the sum non-finite (a finite
    # sum that overflows falls through to the exact element-wise check).
    if A.numel() == 0 or bool(torch.isfinite(A.sum())):
        return
    if not torch.isfinite(A).all():
        bad = int((~torch.isfinite(A)).sum())
        raise ActivationError(
            f"{where} contain {bad} NaN/Inf values; check the model's input normalisation "
            "and that the layer's outputs are finite (e.g. run the model on the same images alone)"
        )


def _with_fit_threads(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f(self, ...)`` run inside ``threads(type(self).fit_threads)``."""

    @functools.wraps(f)
    def run(self: Decomposition, *args: Any, **kwargs: Any) -> Any:
        with threads(type(self).fit_threads):
            return f(self, *args, **kwargs)

    run._with_fit_threads = True  # type: ignore[attr-defined]
    return run


class Decomposition:
    """Base class of concept extractors: ``fit(A)``, ``encode(A)``, ``decode(U)``, ``components_``.

    Subclasses set ``components_`` (``W [k, C]``) in ``fit`` and implement ``_encode_rows`` and
    optionally ``_decode_rows``. Fitted attributes end in ``_``.
    """

    name: ClassVar[str] = "base"
    # -- declarations: what the method needs; the explainer, compare, the report and the CLI read these
    #    and never name a method ---------------------------------------------------------------------
    #: Display name in tables and reports (default: the registered name).
    label: ClassVar[str] = ""
    #: True when the method requires non-negative activations (NMF-like).
    nonnegative: ClassVar[bool] = False
    #: ``"positions"``: fitted on every spatial position of ``A``; ``"crops"``: the explainer cuts the fit
    #: images into crops (``crop_params()``) and fits the bank on one spatially averaged row per crop.
    fit_on: ClassVar[str] = "positions"
    #: True when the method uses the classifier head ``h``: the explainer calls :meth:`set_head` before
    #: :meth:`fit` (and after loading).
    uses_head: ClassVar[bool] = False
    #: The importance estimator ``importance="auto"`` picks (None: closed form for a GAP + linear head,
    #: else autograd).
    default_importance: ClassVar[str | None] = None
    #: How an edit removes a concept: ``"reconstruction"`` (its part ``U_i ⊗ D_i`` of the reconstruction is
    #: subtracted, keeping the residual; :class:`conceptlens.edit.ConceptEditHead`) or ``"own"`` (the
    #: method's :meth:`edit_head` builds the edited head).
    edit_rule: ClassVar[str] = "reconstruction"
    #: Extra sections of the method's HTML report (names of :mod:`conceptlens.report.sections` modules
    #: that the report adds by default, e.g. ``("edits",)``).
    report_sections: ClassVar[tuple[str, ...]] = ()
    #: The name of the constructor argument that trades the method off against another goal and that
    #: :mod:`conceptlens.workflows.sweep` sweeps (FACE: ``"kl_weight"``), or None.
    sweep_param: ClassVar[str | None] = None
    #: Constructor arguments for quick runs (tests, ``bench --quick``, the ground-truth board's quick mode).
    quick_params: ClassVar[Mapping[str, Any]] = {}
    #: Constructor arguments that fit the demo's time budget (a few minutes on a laptop CPU).
    demo_params: ClassVar[Mapping[str, Any]] = {}
    #: The fitted tensors :meth:`state_tensors` saves; loading a file accepts these names and no others.
    state_fields: ClassVar[tuple[str, ...]] = ("components_",)
    #: True when ``_encode_rows`` itself raises on NaN/Inf rows (from a product it computes anyway),
    #: which spares ``encode`` a full extra pass over ``A``.
    encode_checks_finite: ClassVar[bool] = False
    #: Intra-op threads of ``fit`` and ``fit_encode`` (None: the process's count). 1 for a fit made of
    #: many small ops, whose parallel regions cost more at their barriers than they give once another
    #: process competes for the cores (measured per method: :mod:`conceptlens._threads`). Fixed per
    #: method, never read from the load, so that a result never depends on how busy the machine is.
    fit_threads: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Run the subclass's own ``fit`` / ``fit_encode`` with its declared :attr:`fit_threads`."""
        super().__init_subclass__(**kwargs)
        for name in ("fit", "fit_encode"):
            f = cls.__dict__.get(name)
            if callable(f) and not getattr(f, "_with_fit_threads", False):
                setattr(cls, name, _with_fit_threads(f))

    def __init__(self, n_concepts: int = 10, seed: int = 0) -> None:
        self.n_concepts = n_concepts
        self.seed = seed

    # -- scikit-learn style parameters ------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as a JSON-friendly dict."""
        import inspect

        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self" and hasattr(self, p)}

    def _validate(self, A: torch.Tensor, finite: bool = True) -> torch.Tensor:
        """``A`` as rows ``[n, C]``, checked (``finite=False``: the caller checks NaN/Inf itself)."""
        rows, _ = as_rows(A)
        if not isinstance(self.n_concepts, int) or self.n_concepts < 1:
            raise ParameterError(f"n_concepts must be a positive integer, got {self.n_concepts!r}")
        C = rows.shape[1]
        if self.n_concepts > C:
            raise ParameterError(
                f"n_concepts={self.n_concepts} is larger than the number of channels C={C}; "
                f"use at most {C} concepts or choose a wider layer"
            )
        if rows.shape[0] < 1:
            raise ActivationError("no activation rows to fit on (empty input)")
        if finite:
            check_finite(rows)
        return rows

    # -- protocol -----------------------------------------------------------------------
    def fit(self, A: torch.Tensor) -> Decomposition:
        """Fit the concept bank on ``A [..., C]``; returns self."""
        raise NotImplementedError

    def _check_fitted(self, what: str) -> None:
        if getattr(self, "components_", None) is None:
            raise NotFittedError(f"{type(self).__name__}.{what} needs a fitted bank: call .fit(A) first")

    def encode(self, A: torch.Tensor) -> torch.Tensor:
        """Coefficients ``U [..., k]`` of ``A [..., C]`` with the bank frozen."""
        self._check_fitted("encode")
        rows, lead = as_rows(A)
        check_channels(rows, self.components_.shape[1], "the bank")
        if not self.encode_checks_finite:
            check_finite(rows)
        U = self._encode_rows(rows.to(self.components_.dtype))
        return U.reshape(*lead, U.shape[-1])

    def decode(self, U: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``A_hat [..., C]`` from coefficients ``U [..., k]``."""
        self._check_fitted("decode")
        rows, lead = as_rows(U)
        Ah = self._decode_rows(rows.to(self.components_.dtype))
        return Ah.reshape(*lead, Ah.shape[-1])

    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode_rows(self, U: torch.Tensor) -> torch.Tensor:
        return U @ self.components_

    # -- hooks the declarations name ----------------------------------------------------------
    def set_head(self, head: Callable[[torch.Tensor], torch.Tensor] | None) -> Decomposition:
        """Attach the classifier head ``h`` (activations → logits) for methods with ``uses_head``."""
        if head is not None and not callable(head):
            raise ParameterError(f"head must be callable (activations → logits), got {type(head).__name__}")
        self.head = head
        return self

    def crop_params(self) -> tuple[int | tuple[int, int], int | float | None]:
        """``(patch_size, stride)`` of the crops a ``fit_on = "crops"`` method is fitted on."""
        return getattr(self, "patch_size", 64), getattr(self, "stride", None)

    def edit_head(self, head: Callable[[torch.Tensor], torch.Tensor],
                  removed: Mapping[int, float]) -> torch.nn.Module:
        """The head ``h'(A) = h(A')`` with concepts removed, for methods with ``edit_rule = "own"``.

        ``removed`` maps a concept index to the fraction of it to take away (1 removes it).
        """
        raise NotImplementedError(f"{type(self).__name__} declares edit_rule={self.edit_rule!r}")

    @classmethod
    def display_name(cls) -> str:
        """The method's name in tables and reports."""
        return cls.label or cls.name

    # -- saving ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to save (safetensors); subclasses with extra state extend it."""
        self._check_fitted("state_tensors")
        return {"components_": self.components_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore fitted tensors saved by :meth:`state_tensors` (only the declared ``state_fields``)."""
        unknown = sorted(set(tensors) - set(self.state_fields))
        if unknown:
            raise ParameterError(f"{type(self).__name__} has no fitted field(s) {unknown}; it restores "
                                 f"{', '.join(self.state_fields)}")
        for k, v in tensors.items():
            setattr(self, k, v)

    components_: torch.Tensor
