"""Where each concept is in an image, by implicit differentiation of the NNLS codes (CRAFT).

Notation: ``x [N,3,H,W]`` images, ``A = g(x) [N,h,w,C]`` activations (channels last), ``W [k,C]`` the concept
bank, ``U [N,h,w,k]`` the codes; for one position, ``a [C]`` is a row of ``A`` and ``u [k]`` its code,
``S = {i : u_i > 0}`` the support of ``u``, ``W_S [|S|, C]`` the rows of ``W`` in ``S``; ``score_i`` is the
spatial mean of ``U_i`` on an image.

The direct alternative, the upsampled codes the peers ship, is
:func:`conceptlens.attribution.maps.upsample_maps` (``U_i`` resized to ``H×W``).

**Implicit differentiation** (CRAFT, Fel et al. 2023). An NMF code is the solution of the non-negative
least-squares problem ``u*(a) = argmin_{u ≥ 0} ½‖a − u W‖²``. Its optimality (KKT) conditions read, on
the support, ``(W_S W_Sᵀ) u_S = W_S a`` and ``u_i = 0`` off it. Where the support does not change under a
small perturbation of ``a`` (strict complementarity: every ``i ∉ S`` has ``W_i · (a − u W) < 0``),
``u*`` is differentiable and the implicit function theorem gives the exact Jacobian

    ``∂u_S/∂a = (W_S W_Sᵀ)⁻¹ W_S``,    ``∂u_i/∂a = 0`` for ``i ∉ S``.

:class:`NNLSCodes` is a ``torch.autograd.Function`` whose backward applies this Jacobian to all rows at
once (one batched ``[n, k, k]`` product with masked inverse Gram matrices), so the codes can sit inside
any autograd graph: after ``g`` (``split.g(x, grad=True)``) to reach the pixels, or on a leaf ``A``.

:func:`implicit_maps` turns it into a map per concept:

* ``level="layer"`` (default; the formula of METHODS.md): a Grad-CAM of the concept score at the layer,
  ``map_i = relu(Σ_c A_c · α_ic)`` with ``α_i = mean_hw ∂score_i/∂A`` obtained by backpropagating through
  the NNLS solution, then bilinearly upsampled to ``H×W``. Unlike ``U_i`` itself (which is zero wherever
  NNLS explained the position with other concepts), the map shows every position whose activation
  points along concept ``i``'s sensitivity direction ``α_i``.
* ``level="input"``: Gradient × Input at the pixels, ``relu(Σ_rgb x ⊙ ∂score_i/∂x)``, the chain rule
  running through the implicit Jacobian and then autograd through ``g`` (baseline 0 = the dataset mean
  colour in normalised space, the same baseline as the pixel deletion metrics).

It needs an NMF-like bank (``decode(U) = U @ W``, codes by NNLS with ``W`` frozen).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from conceptlens.attribution.maps import spatial_mean
from conceptlens.errors import ActivationError, ImageError, NotFittedError, ParameterError

__all__ = ["NNLSCodes", "implicit_codes", "nnls_jacobian", "implicit_maps"]


# ------------------------------------------------------------------------------------------------ NNLS
def _masked_inverse_gram(W: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """``[n, k, k]``: ``(W_S W_Sᵀ)⁻¹`` of each row's support, embedded with zeros off the support.

    The Gram of the support is completed with the identity off the support (block diagonal, so the
    inverse's ``S×S`` block is exactly ``(W_S W_Sᵀ)⁻¹``), then masked back. A singular ``W_S W_Sᵀ`` (more
    active concepts than independent directions) falls back to the pseudo-inverse: the minimum-norm
    solution of the same linear system.
    """
    s = support.to(W.dtype)  # [n, k]
    G = W @ W.T  # [k, k]
    Gs = G * (s[:, :, None] * s[:, None, :]) + torch.diag_embed(1.0 - s)
    inv, info = torch.linalg.inv_ex(Gs)
    bad = info != 0
    if bool(bad.any()):
        inv = inv.clone()
        inv[bad] = torch.linalg.pinv(Gs[bad], hermitian=True)
    inv = torch.where(torch.isfinite(inv), inv, torch.zeros_like(inv))
    return inv * (s[:, :, None] * s[:, None, :])


class NNLSCodes(torch.autograd.Function):
    """NNLS codes ``u*(a)`` of rows ``a [n, C]`` (bank ``W [k, C]`` frozen) with the exact implicit gradient.

    ``forward(A, W, U0, polish)``: ``U0 [n, k]`` are codes from the decomposition's NNLS solver (they fix the
    support); with ``polish`` the support's equations ``(W_S W_Sᵀ) u_S = W_S a`` are solved exactly (rows
    where that would give a negative entry keep ``U0``, whose support is then not the exact one).
    ``backward``: ``∂L/∂a = Σ_i (∂L/∂u_i) ∂u_i/∂a = ((∂L/∂u)_S (W_S W_Sᵀ)⁻¹) W_S`` for every row at once.
    No gradient flows to ``W`` (the bank is frozen).
    """

    @staticmethod
    def forward(
        ctx: Any, A: torch.Tensor, W: torch.Tensor, U0: torch.Tensor, polish: bool = True
    ) -> torch.Tensor:
        support = U0 > 0
        inv = _masked_inverse_gram(W, support)
        U = U0
        if polish:
            exact = torch.einsum("nij,nj->ni", inv, A @ W.T)
            ok = (exact >= 0).all(1, keepdim=True)
            U = torch.where(ok & support, exact, torch.where(ok, torch.zeros_like(U0), U0))
        ctx.save_for_backward(inv, W)
        return U

    @staticmethod
    def backward(ctx: Any, gU: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        inv, W = ctx.saved_tensors
        gA = None
        if ctx.needs_input_grad[0]:
            gA = torch.einsum("nij,nj->ni", inv, gU) @ W
        return gA, None, None, None


def _bank(decomposition: Any) -> torch.Tensor:
    W = getattr(decomposition, "components_", None)
    if W is None:
        raise NotFittedError("implicit concept maps need a fitted decomposition: call .fit first")
    if not getattr(decomposition, "nonnegative", False):
        raise ParameterError(
            f"implicit-differentiation maps need an NMF-like concept bank whose codes solve a non-negative "
            f"least-squares problem (method 'nmf' or 'craft'); {type(decomposition).__name__} is not. Use "
            "maps='upsample' for this method"
        )
    return W


def implicit_codes(A: torch.Tensor, decomposition: Any, *, polish: bool = True) -> torch.Tensor:
    """Codes ``U [..., k]`` of ``A [..., C]`` that backpropagate through the NNLS solution (implicitly).

    Parameters
    ----------
    A
        ``[..., C]`` activations, possibly part of an autograd graph (e.g. ``split.g(x, grad=True)``).
    decomposition
        A fitted NMF-like decomposition (its ``encode`` solves the NNLS problem and fixes the support).
    polish
        Solve the support's equations exactly in the forward pass (see :class:`NNLSCodes`).

    Returns
    -------
    torch.Tensor
        ``[..., k]`` non-negative codes; ``∂U/∂A`` is the exact implicit Jacobian.
    """
    W = _bank(decomposition)
    if A.shape[-1] != W.shape[1]:
        raise ActivationError(f"activations have {A.shape[-1]} channels but the bank has {W.shape[1]}")
    lead = A.shape[:-1]
    rows = A.reshape(-1, A.shape[-1])
    W = W.to(rows.device, rows.dtype)
    with torch.no_grad():
        U0 = decomposition.encode(rows.detach()).to(rows.dtype)
    U = NNLSCodes.apply(rows, W, U0, polish)
    return U.reshape(*lead, W.shape[0])


def nnls_jacobian(A: torch.Tensor, W: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """The exact Jacobian ``∂u*/∂a [n, k, C]`` of NNLS codes at each row (explicitly, for tests and analysis).

    Parameters
    ----------
    A
        ``[n, C]`` rows (unused except for the shape check: the Jacobian depends on ``a`` only through the
        support).
    W
        ``[k, C]`` bank.
    U
        ``[n, k]`` NNLS codes of ``A`` (their support ``u > 0`` selects ``S``).

    Returns
    -------
    torch.Tensor
        ``[n, k, C]``: ``(W_S W_Sᵀ)⁻¹ W_S`` on the support rows, zero elsewhere.
    """
    if A.ndim != 2 or U.ndim != 2 or A.shape[0] != U.shape[0] or W.shape != (U.shape[1], A.shape[1]):
        raise ParameterError(
            f"nnls_jacobian needs A [n,C], W [k,C], U [n,k]; got {list(A.shape)}, {list(W.shape)}, "
            f"{list(U.shape)}"
        )
    return _masked_inverse_gram(W.to(U.dtype), U > 0) @ W.to(U.dtype)


# ------------------------------------------------------------------------------------------------ maps
def _concept_grads(scores: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """``[k, *wrt.shape]``: the gradient of each concept's summed score (images are independent)."""
    k = scores.shape[1]
    out = []
    for i in range(k):  # one backward per concept; each is batched over images and positions
        (g,) = torch.autograd.grad(scores[:, i].sum(), wrt, retain_graph=i < k - 1)
        out.append(g)
    return torch.stack(out)


def implicit_maps(
    split: Any,
    decomposition: Any,
    x: torch.Tensor,
    *,
    A: torch.Tensor | None = None,
    level: str = "layer",
    batch_size: int | None = None,
    rectify: bool = True,
) -> torch.Tensor:
    """Concept attribution maps by implicit differentiation of the NNLS codes (see the module docstring).

    Parameters
    ----------
    split
        The :class:`~conceptlens.split.model_split.ModelSplit` the bank was fitted at.
    decomposition
        A fitted NMF-like decomposition (``nmf``, ``craft``).
    x
        ``[N,3,H,W]`` normalised images.
    A
        Precomputed ``g(x) [N,h,w,C]`` (``level="layer"`` only; skips the forward pass).
    level
        ``"layer"``: Grad-CAM at the layer, ``relu(Σ_c A_c · mean_hw ∂score_i/∂A_c)``, upsampled;
        ``"input"``: Gradient × Input at the pixels, ``relu(Σ_rgb x · ∂score_i/∂x)``.
    batch_size
        Images per pass (default: the split's ``batch_size``); bounds the memory of the graph.
    rectify
        Apply the ``relu`` (default). Without it, ``level="input"`` maps of a network and codes that are
        positively homogeneous (ReLU, no biases) sum over the pixels to the concept score (Euler).

    Returns
    -------
    torch.Tensor
        ``[N, k, H, W]`` maps (non-negative with ``rectify``; detached).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
        raise ImageError(f"expected images [N,3,H,W] with N ≥ 1, got {list(getattr(x, 'shape', []))}")
    if level not in ("layer", "input"):
        raise ParameterError(f"level must be 'layer' or 'input', got {level!r}")
    W = _bank(decomposition)
    N = x.shape[0]
    size = (int(x.shape[-2]), int(x.shape[-1]))
    bs = int(batch_size or getattr(split, "batch_size", 32))
    act = torch.relu if rectify else (lambda t: t)
    out = []
    for b in range(0, N, bs):
        xb = x[b : b + bs]
        if level == "layer":
            Ab = split.g(xb) if A is None else A[b : b + bs]
            Ab = Ab.detach().to(W.dtype).requires_grad_(True)
            with torch.enable_grad():
                U = implicit_codes(Ab, decomposition)
                grads = _concept_grads(spatial_mean(U), Ab)  # [k, n, ..., C]
            if Ab.ndim == 2:  # a flat layer has no map: the score is the whole image's value
                m = act((grads * Ab.detach()).sum(-1)).T[:, :, None, None].expand(-1, -1, *size)
            else:
                kk, n = grads.shape[0], grads.shape[1]
                alpha = grads.reshape(kk, n, -1, grads.shape[-1]).mean(2)  # [k, n, C]
                cam = act(torch.einsum("n...c,knc->nk...", Ab.detach(), alpha))  # [n, k, h, w]
                m = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        else:
            xb = xb.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                Ab = split.g(xb, grad=True)
                U = implicit_codes(Ab.to(W.dtype), decomposition)
                grads = _concept_grads(spatial_mean(U), xb)  # [k, n, 3, H, W]
            m = act((grads * xb.detach()).sum(2)).transpose(0, 1)
        out.append(m.detach().contiguous())
    return torch.cat(out)
