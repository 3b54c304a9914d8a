"""ICE concept weights for a GAP + linear head: the exact closed form.

For ``h(A) = mean_hw(A) @ Wcls.T + b`` and an affine decode ``A ≈ U @ D + offset`` (``D [k, C]`` the concept
directions, ``offset [C]``, zero except for PCA's mean), the target logit splits exactly into

``logit_c = Σ_j mean_hw(U_j) (D_j · w_c) + mean_hw(R) · w_c + (b_c + offset · w_c)``

with ``R = A − decode(U)``: concept ``j``'s weight is ``D_j · w_c``, its contribution
``score_j × weight_j``; contributions + residual + bias equal the logit (the bias is included: ICE's code
forgot it). The global importance is the mean contribution over the fit images.
"""

from __future__ import annotations

import torch

from conceptlens.errors import ParameterError
from conceptlens.importance.base import Context, Importance, concept_directions, register

__all__ = ["linear_weights", "scores"]


def scores(U: torch.Tensor) -> torch.Tensor:
    """Concept scores: the spatial mean of the coefficients, ``U [N, ..., k] -> [N, k]``."""
    return U.reshape(U.shape[0], -1, U.shape[-1]).mean(1) if U.ndim > 2 else U


def linear_weights(decomposition: object, weight_row: torch.Tensor) -> torch.Tensor:
    """Concept weights ``D_j · w_c`` → ``[k]`` (``weight_row [C]`` is the class's row of the linear head)."""
    D, _ = concept_directions(decomposition)
    return D @ weight_row.to(D.dtype)


@register("linear")
def linear_importance(ctx: Context) -> Importance:
    """Closed-form ICE weights and mean contributions; requires a GAP + linear head."""
    head = ctx.split.linear_head()
    if head is None:
        raise ParameterError(
            f"importance='linear' needs a head that is global-average-pooling + linear after layer "
            f"{ctx.split.layer!r}; use importance='gradient' (autograd, any head) or 'sobol'"
        )
    w = linear_weights(ctx.decomposition, head.weight[ctx.target])
    values = (scores(ctx.U) * w).mean(0)
    return Importance(values=values, weights=w, method="linear")
