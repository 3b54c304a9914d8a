"""Where each concept is in an image: concept attribution maps, two ways.

Notation: ``x [N,3,H,W]`` images, ``A = g(x) [N,h,w,C]`` activations (channels last), ``W [k,C]`` the concept
bank, ``U [N,h,w,k]`` the codes; for one position, ``a [C]`` is a row of ``A`` and ``u [k]`` its code,
``S = {i : u_i > 0}`` the support of ``u``, ``W_S [|S|, C]`` the rows of ``W`` in ``S``; ``score_i`` is the
spatial mean of ``U_i`` on an image.

1. **Upsampled codes** (what the peers ship): :func:`upsample_maps` resizes ``U_i`` to ``H×W``.

2. **Implicit differentiation** (CRAFT, Fel et al. 2023). An NMF code is the solution of the non-negative
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

Both need an NMF-like bank (``decode(U) = U @ W``, codes by NNLS with ``W`` frozen).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from conceptlens.errors import ActivationError, ImageError, NotFittedError, ParameterError

__all__ = ["upsample_maps", "NNLSCodes", "nnls_codes", "nnls_jacobian", "implicit_maps"]


def _spatial_mean(U: torch.Tensor) -> torch.Tensor:
    return U.reshape(U.shape[0], -1, U.shape[-1]).mean(1) if U.ndim > 2 else U


def upsample_maps(U: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Coefficient maps ``U [N,h,w,k]`` → ``[N,k,H,W]`` (bilinear); flat ``[N,k]`` become constant maps."""
    if U.ndim == 4:
        return F.interpolate(U.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    s = _spatial_mean(U)
    return s[:, :, None, None].expand(*s.shape, *size)


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


def nnls_codes(A: torch.Tensor, decomposition: Any, *, polish: bool = True) -> torch.Tensor:
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
                U = nnls_codes(Ab, decomposition)
                grads = _concept_grads(_spatial_mean(U), Ab)  # [k, n, ..., C]
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
                U = nnls_codes(Ab.to(W.dtype), decomposition)
                grads = _concept_grads(_spatial_mean(U), xb)  # [k, n, 3, H, W]
            m = act((grads * xb.detach()).sum(2)).transpose(0, 1)
        out.append(m.detach().contiguous())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ report
def maps_section(
    ex: Any,
    x: torch.Tensor,
    *,
    n_images: int = 3,
    n_concepts: int = 3,
    A: torch.Tensor | None = None,
    names: list[str] | None = None,
    title: str = "Concept maps: upsampled codes and implicit differentiation",
) -> Any:
    """A report :class:`~conceptlens.report.Section` with both kinds of maps side by side.

    For the first ``n_images`` images and the ``n_concepts`` most important concepts, one strip per image:
    for each concept, its upsampled code map next to its implicit-differentiation map (ICE heatmaps: the
    region above half the map's maximum bright, the rest dimmed).

    Parameters
    ----------
    ex
        A fitted explainer with an NMF-like bank.
    x
        ``[N,3,H,W]`` normalised images.
    n_images, n_concepts
        How many images and concepts to show.
    A
        Precomputed ``g(x)``.
    names
        Image names for the captions.
    """
    from markupsafe import escape

    from conceptlens.report import Section, figures

    n = min(int(n_images), x.shape[0])
    k = ex.concepts_.shape[0]
    top = [int(j) for j in torch.argsort(-ex.importance_.detach().cpu(), stable=True)[: min(n_concepts, k)]]
    xs = x[:n]
    As = ex.activations(xs) if A is None else A[:n]
    up = ex.explain(xs, A=As, maps="upsample").maps.detach().cpu()
    imp = implicit_maps(ex.split, ex.decomposition_, xs, A=As).cpu()
    pics = figures.to_pictures(xs, getattr(ex.split, "preset", None))
    names = names or [f"image {i}" for i in range(n)]
    images: dict[str, Any] = {}
    parts = [
        "<p>For each image, every concept is shown twice: its <b>upsampled</b> code map (the peers' concept "
        "map) and its <b>implicit</b> map, a Grad-CAM of the concept score at the layer through the exact "
        "derivative of the non-negative least-squares codes (CRAFT's concept attribution map). Regions above "
        "half the map's maximum are bright.</p>"
    ]
    for i in range(n):
        maps_i = torch.stack([m for j in top for m in (up[i, j], imp[i, j])]).numpy()
        caps = [f"c{j} {kind}" for j in top for kind in ("upsampled", "implicit")]
        strip = figures.prototype_strip(pics[[i] * len(caps)], maps_i, caps, tile=160, gap=4)
        fname = f"maps_{i:03d}.png"
        images[fname] = strip
        parts.append(f"<h3>{escape(names[i])}</h3><img src=\"img/{fname}\" alt=\"upsampled and implicit maps "
                     f"of concepts {', '.join(map(str, top))} on {escape(names[i])}\" "
                     "style=\"max-width:100%;height:auto\">")
    return Section(title=title, html="".join(parts), images=images)
