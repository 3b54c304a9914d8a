"""Faithfulness numbers for a fitted explainer.

Notation: ``F(x) = h(g(x))`` the model, ``F̂(x) = h(decode(encode(g(x))))`` the model seen through the
concepts, ``c`` the target class, ``U [N,...,k]`` coefficients.

ICE (seed 002):
- ``fid_c``: fraction of images whose top-1 class under ``F̂`` equals that under ``F`` (plain top-1
  agreement; the seed computes it over the top-5 candidates — we report top-1 and say so).
- ``fid_r = Σ|F_c − F̂_c| / (Σ|F_c| + ε)`` over the target logit.
Also: relative reconstruction error ``‖A − Â‖_F / ‖A‖_F`` and sparsity (fraction of non-zero codes).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptlens.errors import NotFittedError, ParameterError

__all__ = ["fidelity", "fid_r", "fid_c", "reconstruction_error", "sparsity", "evaluate"]

_EPS = 1e-12


def fid_c(logits: torch.Tensor, approx: torch.Tensor) -> float:
    """Top-1 agreement of ``approx [N,K]`` with ``logits [N,K]`` (fraction in [0, 1])."""
    return float((logits.argmax(1) == approx.argmax(1)).float().mean())


def fid_r(logit_c: torch.Tensor, approx_c: torch.Tensor, eps: float = _EPS) -> float:
    """``Σ|F_c − F̂_c| / (Σ|F_c| + eps)`` over images (``[N]`` each); 0 is perfect."""
    return float((logit_c - approx_c).abs().sum() / (logit_c.abs().sum() + eps))


def reconstruction_error(A: torch.Tensor, A_hat: torch.Tensor) -> float:
    """Relative Frobenius error ``‖A − Â‖ / ‖A‖`` (0 when ``A`` is all zero and so is ``Â``)."""
    # float64 accumulation: a float32 norm over ~10⁷ entries is off by ~0.2 %
    num = float(torch.linalg.vector_norm((A - A_hat).double()))
    den = float(torch.linalg.vector_norm(A.double()))
    return num / den if den > 0 else num


def sparsity(U: torch.Tensor, tol: float = 1e-8, *, dtype: torch.dtype = torch.float32) -> float:
    """Fraction of non-zero coefficients (``|u| > tol``) in ``U [..., k]``; lower is sparser.

    Parameters
    ----------
    U : Tensor ``[..., k]``
        Concept coefficients.
    tol : float
        Magnitude at or below which a coefficient counts as zero. FACE's definition is ``tol=0`` (exact
        non-zeros); every row has ``k`` entries, so the overall fraction is also the mean over rows.
    dtype : torch.dtype
        Precision of the mean: ICE's numbers use float32, FACE's tables float64 (exact for any size).

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    ParameterError
        ``U`` is empty.
    """
    if U.numel() == 0:
        raise ParameterError("U is empty: sparsity needs at least one coefficient")
    return float((U.abs() > tol).to(dtype).mean())


def evaluate(
    ex: Any, x: torch.Tensor, *, A: torch.Tensor | None = None, target: int | None = None
) -> dict[str, float]:
    """All ICE numbers for a fitted explainer on images ``x [N,3,H,W]``.

    Returns
    -------
    dict
        ``fid_c``, ``fid_r``, ``accuracy`` (top-1 of ``F̂`` equal to the target class, a fraction),
        ``model_accuracy`` (same for ``F``), ``reconstruction_error``, ``sparsity``, ``n_images``.
    """
    if getattr(ex, "decomposition_", None) is None:
        raise NotFittedError("the explainer is not fitted: call ex.fit(x, target) before measuring its "
                             "fidelity")
    A = ex.activations(x) if A is None else A
    c = ex.target_ if target is None else target
    d = ex.decomposition_
    with torch.no_grad():
        U = d.encode(A)
        A_hat = d.decode(U)
        F_ = ex.split.h(A)
        Fh = ex.split.h(A_hat)
    return {
        "fid_c": fid_c(F_, Fh),
        "fid_r": fid_r(F_[:, c], Fh[:, c]),
        "accuracy": float((Fh.argmax(1) == c).float().mean()),
        "model_accuracy": float((F_.argmax(1) == c).float().mean()),
        "reconstruction_error": reconstruction_error(A, A_hat),
        "sparsity": sparsity(U),
        "n_images": float(A.shape[0]),
    }


def fidelity(ex: Any, x: torch.Tensor, *, A: torch.Tensor | None = None) -> dict[str, float]:
    """ICE fidelity of a fitted explainer on ``x [N,3,H,W]``: ``{"fid_c": …, "fid_r": …}``."""
    m = evaluate(ex, x, A=A)
    return {"fid_c": m["fid_c"], "fid_r": m["fid_r"]}

