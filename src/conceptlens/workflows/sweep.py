"""FACE's λ sweep: one fit per KL weight ``λ`` plus the λ = 0 reference rows, measured the same way.

Notation: ``A [N, *S, C]`` activations of ``N`` images, ``h`` the head, ``U W`` a factorisation of ``A``
with ``k`` concepts, ``λ`` FACE's KL weight (the ``sweep_param`` that :class:`~conceptlens.decompose.face.
FACE` declares), ``c`` the target class.

Why: the seed claims that FACE's KL term makes concepts more faithful to the classifier without hurting
much else. :func:`face_sweep` tests it as the paper's tables do: FACE at each ``λ``, and ICE (plain NMF) and
CRAFT (NMF on crops) as the ``λ = 0`` references, all judged by the pure metrics of
:mod:`conceptlens.metrics.face` on the class's correctly classified images, with one concept ranking per
factorisation (global Sobol total indices). The reference methods are found in the decomposition
registry (``"ice"`` is an alias of NMF) and fitted where they declare (``fit_on``): CRAFT's bank on one
spatially averaged row per crop. The result (:class:`~conceptlens.workflows.sweep_result.SweepResult`)
prints, saves and judges itself; the data of the two standard sweeps come from
:mod:`conceptlens.workflows.sweep_data`.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from conceptlens._check import check_int
from conceptlens.decompose.base import Decomposition, get
from conceptlens.decompose.face import KLTerm
from conceptlens.errors import ParameterError, TargetError
from conceptlens.importance.sobol import concept_total_indices
from conceptlens.metrics.face import (
    accuracy_deletion,
    accuracy_insertion,
    c_gini,
    predictions,
    reconstruction_accuracy,
    stability,
)
from conceptlens.metrics.ice import sparsity
from conceptlens.workflows.compare import ALIASES
from conceptlens.workflows.sweep_data import SweepData, real_sweep_data, world_sweep_data
from conceptlens.workflows.sweep_result import SWEEP_COLUMNS, SweepResult, format_table

__all__ = [
    "face_sweep",
    "sweep",
    "run_sweep",
    "parse_kl_weights",
    "REFERENCES",
    "SWEEP_COLUMNS",
    "SweepResult",
    "SweepData",
    "format_table",
    "real_sweep_data",
    "world_sweep_data",
]

Head = Callable[[torch.Tensor], torch.Tensor]

#: The λ = 0 reference methods of the paper's tables: ICE (plain NMF on every position) and CRAFT
#: (NMF on one spatially averaged row per crop, codes per position by NNLS).
REFERENCES: tuple[str, ...] = ("ice", "craft")
#: The method whose ``sweep_param`` is swept.
_SWEPT = "face"


def _target_list(target: int | Sequence[int]) -> list[int]:
    try:
        targets = [operator.index(target)]  # type: ignore[arg-type]
    except TypeError:
        try:
            targets = [operator.index(t) for t in target]  # type: ignore[union-attr]
        except TypeError as e:
            raise TargetError(f"target must be a class index or a list of them, got {target!r}") from e
    if not targets:
        raise TargetError("no target class given; pass a class index or a list of them")
    return targets


def parse_kl_weights(kl_weights: str | Sequence[float]) -> tuple[float, ...]:
    """Validate ``λ`` values: a comma-separated string (``"0,1e-5,1e-3"``) or numbers; each finite ``≥ 0``.

    Returns
    -------
    tuple of float
        In the order given; duplicates removed (first kept).

    Raises
    ------
    ParameterError
        Empty, not a number, negative, NaN or infinite.
    """
    items: list[Any]
    if isinstance(kl_weights, str):
        items = [t.strip() for t in kl_weights.split(",") if t.strip()]
    else:
        items = list(kl_weights)
    if not items:
        raise ParameterError("no KL weight given: pass λ values, e.g. --kl-weights 0,1e-5,1e-3,1e-1,10")
    out: list[float] = []
    for t in items:
        try:
            v = float(t) if not isinstance(t, bool) else math.nan
        except (TypeError, ValueError):
            raise ParameterError(
                f"KL weight {t!r} is not a number; give comma-separated numbers ≥ 0, e.g. 0,1e-5,1e-3"
            ) from None
        if not math.isfinite(v) or v < 0:
            raise ParameterError(f"KL weight {t!r} must be a finite number ≥ 0 (λ = 0 is plain NMF)")
        if v not in out:
            out.append(v)
    return tuple(out)


def _measure(
    head: Head,
    A: torch.Tensor,
    U: torch.Tensor,
    W: torch.Tensor,
    U_enc: torch.Tensor,
    sels: dict[int, torch.Tensor],
    seed: int,
    n_designs: int,
    batch_size: int,
) -> dict[str, float]:
    """FACE's numbers for one factorisation ``A ≈ U W`` (class-dependent ones averaged over ``sels``)."""
    with torch.no_grad():
        A_hat = U @ W
        A_enc = U_enc @ W
    per_class = []
    for c, sel in sels.items():
        imp = concept_total_indices(
            U[sel], W, head, c, n_designs=n_designs, seed=seed, n_boot=0, progress=False
        ).indices
        per_class.append(
            {
                "accuracy": reconstruction_accuracy(head, A, A_hat, c, batch_size=batch_size),
                "accuracy_encoded": reconstruction_accuracy(head, A, A_enc, c, batch_size=batch_size),
                "c_ins": accuracy_insertion(head, U, W, imp, c, images=sel, batch_size=batch_size),
                "c_del": accuracy_deletion(head, U, W, imp, c, images=sel, batch_size=batch_size),
                "c_gini": c_gini(imp),
            }
        )
    mean = {key: sum(r[key] for r in per_class) / len(per_class) for key in per_class[0]}
    return {
        **mean,
        "agreement": reconstruction_accuracy(head, A, A_hat, None, batch_size=batch_size),
        "sparsity": sparsity(U, 0.0, dtype=torch.float64),  # FACE's: exact non-zeros
    }


def _check_craft_crops(
    craft_A: torch.Tensor | None, craft_index: torch.Tensor | None, N: int
) -> torch.Tensor | None:
    if craft_A is None:
        if craft_index is not None:
            raise ParameterError("craft_index was given without craft_A (the crops' activations)")
        return None
    if craft_index is None:
        raise ParameterError(
            "craft_A needs craft_index [M] (the image each crop was cut from; data.crops returns it), "
            "so that "
            "stability can split crops by image"
        )
    idx = torch.as_tensor(craft_index).long().flatten()
    if idx.numel() != craft_A.shape[0]:
        raise ParameterError(f"craft_index has {idx.numel()} entries for {craft_A.shape[0]} crops")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= N):
        raise ParameterError(
            f"craft_index must be image indices in [0, {N}), got {int(idx.min())}..{int(idx.max())}"
        )
    return idx.to(craft_A.device)


def _reference_row(
    ref: str,
    A: torch.Tensor,
    head: Head,
    term: Any,
    sels: dict[int, torch.Tensor],
    k: int,
    seed: int,
    craft_A: torch.Tensor | None,
    cidx: torch.Tensor | None,
    with_stability: bool,
    n_designs: int,
    batch_size: int,
    n_images: float,
) -> dict[str, Any]:
    """The row of one λ = 0 reference method, fitted where it declares (``fit_on``), default parameters."""
    cls = get(ALIASES.get(ref, ref))
    on_crops = cls.fit_on == "crops"
    t0 = time.perf_counter()
    d: Any = cls(n_concepts=k, seed=seed)
    if on_crops:
        d.fit(A if craft_A is None else craft_A)
        W = d.components_
        elapsed = time.perf_counter() - t0
        U = U_enc = d.encode(A)
    else:
        U = d.fit_encode(A)
        W = d.components_
        elapsed = time.perf_counter() - t0
        U_enc = d.encode(A)
    with torch.no_grad():
        A_hat = U @ W
    mse = float((A - A_hat).to(torch.float64).square().mean())
    kl = float(term.value(A_hat).mean())
    row = {
        "method": ref,
        "kl_weight": 0.0,
        "mse": mse,
        "kl": kl,
        "total": mse,
        **_measure(head, A, U, W, U_enc, sels, seed, n_designs, batch_size),
        "stability": math.nan,
        "seconds": elapsed,
        "n_iter": float(getattr(d, "n_iter_", math.nan)),
        "n_images": n_images,
    }
    if with_stability:
        if not on_crops or craft_A is None:
            row["stability"] = stability(lambda a: cls(n_concepts=k, seed=seed).fit(a).components_, A)
        else:
            where_default = cast(torch.Tensor, cidx)

            def crop_refit(
                train: torch.Tensor, crops: torch.Tensor = craft_A, where: torch.Tensor = where_default
            ) -> torch.Tensor:
                keep = torch.isin(where, train.to(where.device))
                return cls(n_concepts=k, seed=seed).fit(crops[keep]).components_

            # The folds split images; each refit sees the crops of its training images.
            row["stability"] = stability(crop_refit, torch.arange(A.shape[0], device=A.device))
    return row


def _swept_row(
    make: Callable[[], Decomposition],
    lam: float,
    A: torch.Tensor,
    head: Head,
    sels: dict[int, torch.Tensor],
    seed: int,
    with_stability: bool,
    n_designs: int,
    batch_size: int,
    n_images: float,
) -> dict[str, Any]:
    """The row of FACE at one ``λ`` (``make()`` builds the configured, unfitted decomposition)."""
    d: Any = make()
    t0 = time.perf_counter()
    U = d.fit_encode(A)
    elapsed = time.perf_counter() - t0
    W = d.components_
    with torch.no_grad():
        U_enc = d.encode(A)
    row = {
        "method": _SWEPT,
        "kl_weight": float(lam),
        "mse": d.objective_["mse"],
        "kl": d.objective_["kl"],
        "total": d.objective_["total"],
        **_measure(head, A, U, W, U_enc, sels, seed, n_designs, batch_size),
        "stability": math.nan,
        "seconds": elapsed,
        "n_iter": float(d.n_iter_),
        "n_images": n_images,
    }
    if with_stability:
        row["stability"] = stability(lambda a: make().fit(a).components_, A)
    return row


def face_sweep(
    A: torch.Tensor,
    head: Head,
    target: int | Sequence[int],
    kl_weights: str | Sequence[float] = (0.0, 1e-5, 1e-3, 1e-1, 10.0),
    n_concepts: int = 10,
    seed: int = 0,
    *,
    references: Sequence[str] = REFERENCES,
    craft_A: torch.Tensor | None = None,
    craft_index: torch.Tensor | None = None,
    with_stability: bool = False,
    n_designs: int = 32,
    batch_size: int = 64,
    progress: bool = False,
    config: dict[str, Any] | None = None,
    **face_params: Any,
) -> SweepResult:
    """FACE at each ``λ`` plus the λ = 0 reference rows (ICE, CRAFT), measured with FACE's metrics.

    One row per method and ``λ``, as in the paper's tables. Every factorisation is judged the same way: the
    concept ranking is its global Sobol total-index importance for the target (``n_designs`` designs) on
    the class's correctly classified images, which are also the images C-Ins, C-Del and the accuracy are
    measured on; the codes are those of the fit (FACE, ICE) or the NNLS codes per position (CRAFT, whose
    bank is fitted on one row per crop).

    Parameters
    ----------
    A : Tensor ``[N, *S, C]``
        Non-negative activations of ``N`` images.
    head : callable
        ``[B, *S, C] → [B, K]`` (``ModelSplit.h``), differentiable.
    target : int or sequence of int
        Class ``c``, or several (the class-dependent numbers are then means over the classes).
    kl_weights : sequence of float or str
        The ``λ`` values (``0`` = NMF), or a comma-separated string; see :func:`parse_kl_weights`.
    n_concepts : int
        ``k`` of every method.
    seed : int
        Seed of every fit and of the Sobol design.
    references : sequence of str
        Reference rows among ``"ice"``, ``"craft"`` (``()`` for none).
    craft_A : Tensor ``[M, h, w, C]``, optional
        Activations of CRAFT's crops (each resized to the input size). ``None``: the ``N`` images
        themselves are the crops (right when they are crops already, as the demo crops are).
    craft_index : Tensor ``[M]``, optional
        The image each crop was cut from (with ``craft_A``; stability splits crops by image).
    with_stability : bool
        Also measure stability (5 more fits per row: slower).
    n_designs : int
        Sobol design size.
    batch_size : int
        Images per head call in the metrics.
    progress : bool
        Print one line per row as it finishes.
    config : dict, optional
        Description of the data (model, layer, images, …) stored in the result.
    **face_params
        Passed to :class:`~conceptlens.decompose.face.FACE` (``max_iter``, ``max_time``, ``tol``, …).
        (FACE is found in the registry; its declared ``sweep_param``, ``kl_weight``, is what is swept.)

    Returns
    -------
    SweepResult
        ``rows`` (keys :data:`SWEEP_COLUMNS`; ``seconds`` is the fit's wall time, ``stability`` NaN unless
        requested), references first, then FACE in the order of ``kl_weights``.
    """
    lams = parse_kl_weights(kl_weights)
    k = check_int("n_concepts", n_concepts, 1)
    refs = [str(r).lower() for r in references]
    bad = [r for r in refs if r not in REFERENCES]
    if bad:
        raise ParameterError(f"unknown reference method {bad[0]!r}; choose among {', '.join(REFERENCES)}")
    targets = _target_list(target)
    N = A.shape[0]
    cidx = _check_craft_crops(craft_A, craft_index, N)
    pred = predictions(head, A, batch_size=batch_size)
    sels = {c: torch.nonzero(pred == c).flatten() for c in targets}
    empty = [c for c, s in sels.items() if s.numel() == 0]
    if empty:
        raise TargetError(
            f"no image is classified as class {empty[0]} by the head; choose images of that class"
        )
    n_images = float(sum(int(v.numel()) for v in sels.values()))
    # The reference rows' KL is measured against p = softmax h(A), computed once.
    term: Any = KLTerm(head, A, face_params.get("batch_images", 256)) if refs else None
    swept: Any = get(_SWEPT)
    param = swept.sweep_param
    if param is None:
        raise ParameterError(f"{swept.display_name()} declares no sweep_param: there is no λ to sweep")
    rows: list[dict[str, Any]] = []

    def say(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress:
            print(format_table([row], header=len(rows) == 1), flush=True)

    for ref in refs:
        say(_reference_row(ref, A, head, term, sels, k, seed, craft_A, cidx, with_stability, n_designs,
                           batch_size, n_images))
    for lam in lams:

        def make(lam: float = float(lam)) -> Decomposition:
            return swept(n_concepts=k, seed=seed, **{param: lam}, **face_params).set_head(head)

        say(_swept_row(make, lam, A, head, sels, seed, with_stability, n_designs, batch_size, n_images))

    cfg = {
        "n_concepts": k,
        "seed": seed,
        "targets": targets,
        "kl_weights": list(lams),
        "references": refs,
        "with_stability": bool(with_stability),
        "n_designs": n_designs,
        "n_images": int(N),
        "image_shape": list(A.shape[1:-1]),
        "channels": int(A.shape[-1]),
        "craft_crops": "the images themselves" if craft_A is None else f"{int(craft_A.shape[0])} crops",
        "face_params": {key: v for key, v in face_params.items() if isinstance(v, (int, float, str, bool))},
        **(config or {}),
    }
    return SweepResult(rows=rows, config=cfg)


def sweep(
    A: torch.Tensor,
    head: Head,
    target: int | Sequence[int],
    kl_weights: Sequence[float] = (0.0, 1e-5, 1e-3, 1e-1, 10.0),
    n_concepts: int = 10,
    seed: int = 0,
    *,
    with_stability: bool = False,
    n_designs: int = 32,
    batch_size: int = 64,
    progress: bool = False,
    **face_params: Any,
) -> list[dict[str, float]]:
    """FACE's rows of :func:`face_sweep` only (no reference rows), as plain dicts.

    Parameters are those of :func:`face_sweep`.

    Returns
    -------
    list of dict
        Per ``λ``: ``kl_weight``, ``mse``, ``kl``, ``total``, ``accuracy`` (fit codes), ``accuracy_encoded``
        (codes from ``encode(A)``), ``agreement`` (top-1 of ``h(Â)`` = top-1 of ``h(A)`` over *all* images),
        ``c_ins``, ``c_del``, ``c_gini``, ``sparsity``, ``stability`` (NaN unless requested), ``time`` (fit
        seconds), ``n_iter``, ``n_images`` (the class's images).
    """
    res = face_sweep(
        A,
        head,
        target,
        kl_weights,
        n_concepts,
        seed,
        references=(),
        with_stability=with_stability,
        n_designs=n_designs,
        batch_size=batch_size,
        progress=progress,
        **face_params,
    )
    out = []
    for r in res.rows:
        row = {key: float(v) for key, v in r.items() if key not in ("method", "seconds")}
        row["time"] = float(r["seconds"])
        out.append(row)
    return out


def run_sweep(
    data: SweepData, kl_weights: str | Sequence[float], n_concepts: int = 10, seed: int = 0, **kwargs: Any
) -> SweepResult:
    """:func:`face_sweep` on a :class:`~conceptlens.workflows.sweep_data.SweepData` (its crops and config).

    Parameters
    ----------
    data : SweepData
        Activations ``A [N, h, w, C]``, head, targets, CRAFT's crops ``[M, h, w, C]`` and their image index.
    kl_weights, n_concepts, seed, **kwargs
        As in :func:`face_sweep`.

    Returns
    -------
    SweepResult
    """
    return face_sweep(
        data.A,
        data.head,
        data.targets,
        kl_weights,
        n_concepts,
        seed,
        craft_A=data.craft_A,
        craft_index=data.craft_index,
        config=data.config,
        **kwargs,
    )
