"""Quantus ``explain_func`` s for conceptlens's explanations, and one call that scores several of them.

Quantus metrics (``quantus.FaithfulnessCorrelation``, ``quantus.RegionPerturbation``, …) take numpy
inputs ``x_batch [N,3,H,W]``, labels ``y_batch [N]`` and either attributions ``a_batch`` or an
``explain_func(model=…, inputs=…, targets=…, **explain_func_kwargs)`` that returns them as numpy
``[N,1,H,W]`` (one value per pixel, broadcast over the channels). The functions here build such callables
(Quantus itself is not imported):

* :func:`quantus_explain_func` ``(explainer)``: a fitted :class:`~conceptlens.ConceptExplainer` gives its
  concept-based class map (:class:`~conceptlens.interop.CaptumConcepts` summed over concepts, upsampled
  bilinearly); a :class:`~conceptlens.attribution.masks.MaskExplainer` gives its minimal masks;
* :func:`gradcam_explain_func`: Grad-CAM (:func:`conceptlens.attribution.baselines.grad_cam`) as the peer;
* :func:`quantus_scores`: one metric on several explain funcs in one call, each run with the same NumPy
  seed (Quantus draws its perturbations from ``np.random``), so the numbers are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from conceptlens.attribution.baselines import grad_cam
from conceptlens.errors import ParameterError
from conceptlens.explainer import ConceptExplainer
from conceptlens.interop.captum_adapter import CaptumConcepts

__all__ = ["ExplainFunc", "quantus_explain_func", "gradcam_explain_func", "quantus_scores"]

#: Quantus's explain function: ``f(model=…, inputs=[N,3,H,W] numpy, targets=[N] numpy) → [N,1,H,W]``.
ExplainFunc = Callable[..., np.ndarray]


def _torch_inputs(inputs: Any, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if x.ndim != 4 or not x.is_floating_point():
        raise ParameterError(f"inputs must be float images [N,3,H,W], got {list(x.shape)} {x.dtype}")
    return x.to(device, torch.float32)


def _targets(targets: Any) -> list[int] | None:
    if targets is None:
        return None
    return [int(t) for t in np.asarray(targets).reshape(-1)]


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _same_model(model: Any, expected: torch.nn.Module, what: str) -> None:
    if model is not None and model is not expected:
        raise ParameterError(f"the Quantus metric was given another model than the one {what} explains; "
                             "pass the same nn.Module to the metric and to the explainer")


def quantus_explain_func(explainer: Any, *, relu: bool = False,
                         interpolate_mode: str = "bilinear") -> ExplainFunc:
    """A Quantus ``explain_func`` for a conceptlens explainer.

    Parameters
    ----------
    explainer
        A fitted :class:`~conceptlens.ConceptExplainer` (concept maps: ``Σ_j U_j · w_j(target)`` at the
        layer, upsampled to the image) or a :class:`~conceptlens.attribution.masks.MaskExplainer` (its
        binary masks for the targets).
    relu
        Concept maps: keep only the positive part (as Grad-CAM does).
    interpolate_mode
        Concept maps: how the layer's ``h×w`` map is brought to ``H×W``.

    Returns
    -------
    callable
        ``f(model=…, inputs=[N,3,H,W], targets=[N], **_) → np.ndarray [N,1,H,W]`` float32.
    """
    if isinstance(explainer, ConceptExplainer):
        captum = CaptumConcepts(explainer)

        def concepts(model: Any = None, inputs: Any = None, targets: Any = None, **_: Any) -> np.ndarray:
            _same_model(model, explainer.split.model, "the ConceptExplainer")
            x = _torch_inputs(inputs, _device(explainer.split.model))
            attr = captum.attribute(x, target=_targets(targets), attr_dim_summation=True,
                                    relu_attributions=relu)
            up = captum.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode)
            return up.detach().cpu().numpy().astype(np.float32)

        return concepts
    if hasattr(explainer, "explain") and hasattr(explainer, "model"):  # a MaskExplainer

        def masks(model: Any = None, inputs: Any = None, targets: Any = None, **_: Any) -> np.ndarray:
            _same_model(model, explainer.model, "the MaskExplainer")
            x = _torch_inputs(inputs, _device(explainer.model))
            return explainer.explain(x, _targets(targets)).masks.detach().cpu().numpy().astype(np.float32)

        return masks
    raise ParameterError(f"quantus_explain_func needs a fitted ConceptExplainer or a MaskExplainer, got "
                         f"{type(explainer).__name__}")


def gradcam_explain_func(layer: str = "auto") -> ExplainFunc:
    """A Quantus ``explain_func`` of Grad-CAM at ``layer`` of whatever model the metric passes.

    Returns
    -------
    callable
        ``f(model=…, inputs=[N,3,H,W], targets=[N], **_) → np.ndarray [N,1,H,W]`` in [0, 1].
    """

    def gradcam(model: Any = None, inputs: Any = None, targets: Any = None, **_: Any) -> np.ndarray:
        if not isinstance(model, torch.nn.Module):
            raise ParameterError(f"Grad-CAM needs the torch model, got {type(model).__name__}")
        x = _torch_inputs(inputs, _device(model))
        return grad_cam(model, x, _targets(targets), layer).detach().cpu().numpy().astype(np.float32)

    return gradcam


def quantus_scores(metric: Callable[..., Any], model: torch.nn.Module, x: Any, y: Any,
                   explain_funcs: Mapping[str, ExplainFunc], *, seed: int = 0,
                   **call_kwargs: Any) -> dict[str, np.ndarray]:
    """Run one Quantus metric on several explanations of the same images, in one call.

    Parameters
    ----------
    metric
        A Quantus metric instance (e.g. ``quantus.FaithfulnessCorrelation(nr_runs=50, subset_size=64)``).
    model
        The classifier (in eval mode).
    x, y
        ``[N,3,H,W]`` normalised images and ``[N]`` class indices (tensors or numpy).
    explain_funcs
        Name → explain function (:func:`quantus_explain_func`, :func:`gradcam_explain_func`, Captum's …).
    seed
        NumPy seed set before each metric run (the global NumPy state is restored afterwards).
    call_kwargs
        More keyword arguments of the metric's call (e.g. ``device="cpu"``, ``batch_size=8``).

    Returns
    -------
    dict
        Name → the metric's scores as a float64 array, shaped as the metric returns them: ``[N]`` per image
        (``FaithfulnessCorrelation``), ``[N, R]`` per-image curves (``RegionPerturbation``'s ``R`` regions),
        ``[1]`` when the metric aggregates.
    """
    if not explain_funcs:
        raise ParameterError("explain_funcs is empty: give {name: explain_func, …}")
    xb = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float32)
    yb = (y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)).astype(np.int64)
    if xb.ndim != 4 or yb.shape != (xb.shape[0],):
        raise ParameterError(f"x must be [N,3,H,W] and y [N]; got {list(xb.shape)} and {list(yb.shape)}")
    out: dict[str, np.ndarray] = {}
    state = np.random.get_state()  # noqa: NPY002 - Quantus draws from the legacy global state
    try:
        for name, fn in explain_funcs.items():
            np.random.seed(seed)  # noqa: NPY002
            res = metric(model=model, x_batch=xb, y_batch=yb, a_batch=None, explain_func=fn, **call_kwargs)
            out[name] = np.asarray(res, dtype=np.float64)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return out
