"""A Captum-style layer attribution whose "neurons" are the concepts (Captum itself is not needed).

Notation: ``x [N,3,H,W]`` the inputs, ``A = g(x) [N,h,w,C]`` the explainer's layer, ``U = encode(A)
[N,h,w,k]`` the concept codes, ``w(c) [k]`` the concept weights for class ``c`` (ICE: ``∂logit_c/∂score``).

Captum's layer methods (``LayerGradCam``, ``LayerActivation``, …) are built on a model and a layer and
return, from ``attribute(inputs, target=…)``, a tensor shaped like the layer's output, channels first
(``[N, C, h, w]`` for a conv layer; ``[N, 1, h, w]`` when Grad-CAM sums over channels), which
``LayerAttribution.interpolate(attr, (H, W))`` upsamples to the input. :class:`CaptumConcepts` follows
that convention with the ``k`` concepts in place of the ``C`` channels:

* ``attribute(x, target=c)`` → ``[N, k, h, w]``, ``U[..., j] · w_j(c)``: concept ``j``'s contribution
  map; its spatial mean is the concept's contribution to the logit of ``c``
  (``ConceptExplainer.explain(x).contributions`` for the explainer's own target);
* ``attr_dim_summation=True`` → ``[N, 1, h, w]``, the sum over concepts (a concept-based class map, the
  counterpart of ``LayerGradCam``'s channel sum; its mean is ``Σ contributions``);
* ``weighted=False`` → the raw codes ``U`` (the counterpart of ``LayerActivation``);
* ``relu_attributions=True`` keeps the positive part, as in ``LayerGradCam``.

Weights for a class other than the explainer's own target come from the head: closed form
``D_j · w_c`` for a GAP + linear head, else autograd at ``decode(U)`` of the images of that class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from conceptlens.errors import NotFittedError, ParameterError
from conceptlens.explainer import ConceptExplainer
from conceptlens.importance.gradient import gradient_weights
from conceptlens.importance.linear import linear_weights
from conceptlens.split.sites import check_target_length, resolve_targets

__all__ = ["CaptumConcepts"]


class CaptumConcepts:
    """Concept maps of a fitted :class:`~conceptlens.ConceptExplainer` with Captum's ``LayerAttribution``
    interface (see the module docstring).

    Parameters
    ----------
    explainer
        A fitted explainer; its split's layer is the attributed layer.

    Attributes
    ----------
    layer : str
        The explainer's layer (call-site name).
    forward_func : torch.nn.Module
        The model (Captum's name for it).

    Examples
    --------
    >>> cc = cl.interop.CaptumConcepts(ex)
    >>> attr = cc.attribute(x, target=285)                 # [N, k, h, w]
    >>> up = cc.interpolate(attr, x.shape[-2:])            # [N, k, H, W]
    """

    def __init__(self, explainer: ConceptExplainer) -> None:
        if not isinstance(explainer, ConceptExplainer):
            raise ParameterError(f"CaptumConcepts needs a ConceptExplainer, got {type(explainer).__name__}")
        if getattr(explainer, "decomposition_", None) is None:
            raise NotFittedError("CaptumConcepts needs a fitted explainer: call ex.fit(x, target) first")
        self.explainer = explainer
        self.layer = explainer.split.layer
        self.forward_func = explainer.split.model

    def _weights(self, c: int, U: torch.Tensor) -> torch.Tensor:
        """``[k]`` concept weights for class ``c`` (the fitted ones for the explainer's target)."""
        ex = self.explainer
        if c == ex.target_:
            return ex.weights_.to(U.dtype)
        head = ex.split.linear_head()
        d = ex.decomposition_
        if head is not None:
            return linear_weights(d, head.weight[c]).to(U.dtype)
        return gradient_weights(d, ex.split.h, d.decode(U).detach(), c).to(U.dtype)

    def attribute(
        self,
        inputs: torch.Tensor,
        target: int | str | Sequence[int | str] | torch.Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        relu_attributions: bool = False,
        attr_dim_summation: bool = False,
        weighted: bool = True,
    ) -> torch.Tensor:
        """Concept maps at the explainer's layer, channels first.

        Parameters
        ----------
        inputs
            ``[N,3,H,W]`` normalised images.
        target
            The class: None (the explainer's target for every image), an index or name, or one per image
            (a list / ``[N]`` tensor, as Captum accepts).
        additional_forward_args
            Captum's extra model arguments: not supported (must be None).
        relu_attributions
            Keep only the positive part.
        attr_dim_summation
            Sum over the concepts: ``[N, 1, h, w]``.
        weighted
            Multiply each code map by its concept's weight for the target (False: the raw codes ``U``).

        Returns
        -------
        torch.Tensor
            ``[N, k, h, w]`` (or ``[N, 1, h, w]``; ``[N, k]`` for a flat layer), detached.
        """
        if additional_forward_args is not None:
            raise ParameterError("CaptumConcepts.attribute does not pass additional_forward_args to the "
                                 "model: wrap the model so that it takes the images alone")
        ex = self.explainer
        A = ex.activations(inputs)
        with torch.no_grad():
            U = ex.encode(A)  # [N, ..., k]
        if weighted:
            check_target_length(target, U.shape[0])
            if target is None:
                classes = torch.full((U.shape[0],), ex.target_, dtype=torch.long)
            else:
                with torch.no_grad():
                    n_out = int(ex.split.h(A[:1]).shape[1])
                classes = resolve_targets(ex.split.model, target, torch.zeros(U.shape[0], n_out)).cpu()
            W = torch.stack([self._weights(int(c), U[(classes == c).to(U.device)])
                             for c in classes.unique()])
            pos = torch.searchsorted(classes.unique(), classes).to(U.device)
            U = U * W.to(U.device)[pos].reshape(U.shape[0], *([1] * (U.ndim - 2)), U.shape[-1])
        attr = U.movedim(-1, 1)
        if attr_dim_summation:
            attr = attr.sum(1, keepdim=True)
        if relu_attributions:
            attr = attr.clamp_min(0)
        return attr.detach()

    @staticmethod
    def interpolate(layer_attribution: torch.Tensor, interpolate_dims: int | tuple[int, ...],
                    interpolate_mode: str = "nearest") -> torch.Tensor:
        """Upsample ``[N, k, h, w]`` to ``[N, k, *interpolate_dims]`` (Captum's
        ``LayerAttribution.interpolate``: ``torch.nn.functional.interpolate`` with ``interpolate_mode``)."""
        if layer_attribution.ndim < 3:
            raise ParameterError(f"only spatial attributions [N, k, h, w] can be interpolated, got shape "
                                 f"{list(layer_attribution.shape)}")
        dims = tuple(int(d) for d in interpolate_dims) if not isinstance(interpolate_dims, int) \
            else interpolate_dims
        return torch.nn.functional.interpolate(layer_attribution, dims, mode=interpolate_mode)
