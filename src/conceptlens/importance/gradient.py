"""ICE concept weights for any differentiable head: TCAV-style directional derivatives by autograd.

Concept ``j``'s weight is the derivative of the target logit when the concept direction ``D_j`` is added
at every position, averaged over the fit images:
``weight_j = mean_n Σ_p ∂h_c/∂A[n, p] · D_j`` (one backward pass per batch of images, no finite
differences). For a GAP + linear head this equals the closed form ``D_j · w_c`` exactly.

Where the derivatives are taken: the explainer evaluates them at the reconstruction ``Â = decode(U)`` of
the fit activations, the point where ``F̂ = h(decode(encode(A)))`` (the model seen through the concepts)
is explained; :func:`gradient_weights` takes any point, so ``gradient_weights(d, h, A, c)`` gives the
weights at the activations themselves (they differ only for a non-linear head).
"""

from __future__ import annotations

import torch

from conceptlens.importance.base import Context, Importance, concept_directions, register
from conceptlens.importance.linear import scores

__all__ = ["gradient_weights"]


def gradient_weights(
    decomposition: object,
    h: object,
    A: torch.Tensor,
    target: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Directional derivatives of ``h(A)[:, target]`` along each concept direction.

    Parameters
    ----------
    decomposition
        Fitted decomposition (affine decode).
    h
        Head, ``[B, ..., C] -> [B, K]`` logits, differentiable.
    A
        ``[N, ..., C]`` activations at which to take the derivative (the decoded fit activations).
    target
        Class index.

    Returns
    -------
    torch.Tensor
        ``[k]`` weights.
    """
    D, _ = concept_directions(decomposition)
    total = torch.zeros(D.shape[1], dtype=A.dtype, device=A.device)
    for i in range(0, A.shape[0], batch_size):
        a = A[i : i + batch_size].detach().requires_grad_(True)
        out = h(a)[:, target].sum()  # type: ignore[operator]
        (grad,) = torch.autograd.grad(out, a)
        total += grad.reshape(-1, grad.shape[-1]).sum(0)
    return (D @ total.to(D.dtype)) / A.shape[0]


@register("gradient")
def gradient_importance(ctx: Context) -> Importance:
    """Autograd ICE weights at the reconstructed fit activations, and mean contributions."""
    A_hat = ctx.decomposition.decode(ctx.U)
    opts = ctx.options or {}
    w = gradient_weights(ctx.decomposition, ctx.split.h, A_hat, ctx.target, opts.get("batch_size", 64))
    values = (scores(ctx.U) * w).mean(0)
    return Importance(values=values, weights=w, method="gradient")
