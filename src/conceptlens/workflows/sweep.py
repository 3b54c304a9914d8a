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

Why held-out images and plain codes: FACE's fit optimises its codes ``U`` with the KL term against ``softmax
h(A)`` of the very images it is fitted on, so scoring those codes measures how well the fit matched the
images' own predictions, not how faithful the concepts are (earlier versions did so), while ICE and CRAFT
were scored on plain codes. The authors project new images without KL. So every method is fitted on one
seeded half of the images and scored on the other half's plain codes (:func:`plain_codes`: NNLS with the
bank frozen); the fit-codes numbers remain only as the labelled ``fitted_*`` columns.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from conceptlens._check import check_float, check_int
from conceptlens._threads import one_thread_each, small_ops
from conceptlens.decompose.base import Decomposition, get
from conceptlens.decompose.face import KLTerm
from conceptlens.errors import ParameterError, TargetError
from conceptlens.importance.sobol import concept_total_indices
from conceptlens.metrics.face import (
    HOLDOUT,
    accuracy_deletion,
    accuracy_insertion,
    c_gini,
    holdout_split,
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
    "plain_codes",
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


def plain_codes(d: Decomposition, A: torch.Tensor) -> torch.Tensor:
    """Codes ``U [N, *S, k]`` of ``A [N, *S, C]`` with the bank frozen and nothing taken from the head.

    The base :meth:`~conceptlens.decompose.base.Decomposition.encode` (each method's ``_encode_rows``:
    NNLS for the non-negative methods): FACE's ``encode`` without its optional KL steps, i.e. how the
    authors project new images. Every headline number of the sweep is measured on these codes.
    """
    with torch.no_grad():
        return Decomposition.encode(d, A)


@dataclass(frozen=True)
class _Eval:
    """What every row is measured with: the fit / held-out activations and the class's images in each."""

    head: Head
    A_fit: torch.Tensor  # [N_fit, *S, C]
    A_held: torch.Tensor  # [N_held, *S, C]
    sels_fit: dict[int, torch.Tensor]  # class → indices into A_fit
    sels_held: dict[int, torch.Tensor]  # class → indices into A_held
    term: Any  # KLTerm on A_held: p = softmax h(A_held)
    seed: int
    n_designs: int
    batch_size: int


def _faithfulness(ev: _Eval, A: torch.Tensor, U: torch.Tensor, W: torch.Tensor, rank_U: torch.Tensor,
                  sels: dict[int, torch.Tensor], rank_sels: dict[int, torch.Tensor]) -> dict[str, float]:
    """Accuracy, C-Ins, C-Del, C-Gini of ``A ≈ U W`` on ``sels``, concepts ranked on ``rank_U[rank_sels]``."""
    with torch.no_grad():
        A_hat = U @ W
    per_class = []
    for c, sel in sels.items():
        imp = concept_total_indices(rank_U[rank_sels[c]], W, ev.head, c, n_designs=ev.n_designs, seed=ev.seed,
                                    n_boot=0, progress=False).indices
        bs = ev.batch_size
        per_class.append({
            "accuracy": reconstruction_accuracy(ev.head, A, A_hat, c, batch_size=bs),
            "c_ins": accuracy_insertion(ev.head, U, W, imp, c, images=sel, batch_size=bs),
            "c_del": accuracy_deletion(ev.head, U, W, imp, c, images=sel, batch_size=bs),
            "c_gini": c_gini(imp),
        })
    return {key: sum(r[key] for r in per_class) / len(per_class) for key in per_class[0]}


def _measure(ev: _Eval, d: Decomposition, U_fitted: torch.Tensor, lam: float) -> dict[str, float]:
    """A row's numbers for the fitted ``d`` (bank ``W``): headline on held-out plain codes, plus extras.

    Headline: the concepts are ranked on the plain codes of the class's *fit* images, and every number is
    measured on the plain codes of the *held-out* images. Extras (``fitted_*``): the fit's own codes of
    the fit images (FACE's are optimised with the KL term against ``h`` of those very images), ranked and
    measured on them, as earlier versions reported.
    """
    W = d.components_
    U_held = plain_codes(d, ev.A_held)
    U_fit = plain_codes(d, ev.A_fit)
    row = _faithfulness(ev, ev.A_held, U_held, W, U_fit, ev.sels_held, ev.sels_fit)
    fitted = _faithfulness(ev, ev.A_fit, U_fitted, W, U_fitted, ev.sels_fit, ev.sels_fit)
    with torch.no_grad():
        A_hat = U_held @ W
    mse = float((ev.A_held - A_hat).to(torch.float64).square().mean())
    kl = float(ev.term.value(A_hat).mean())
    return {
        "mse": mse,
        "kl": kl,
        "total": mse + lam * kl,
        **row,
        "agreement": reconstruction_accuracy(ev.head, ev.A_held, A_hat, None, batch_size=ev.batch_size),
        "sparsity": sparsity(U_held, 0.0, dtype=torch.float64),  # FACE's: exact non-zeros
        **{f"fitted_{key}": fitted[key] for key in ("accuracy", "c_ins", "c_del")},
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


def _fit_crops(
    craft_A: torch.Tensor | None, cidx: torch.Tensor | None, fit: torch.Tensor, N: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The crops cut from the fit images, with their image index renumbered into the fit split."""
    if craft_A is None or cidx is None:
        return None, None
    local = torch.full((N,), -1, dtype=torch.long, device=cidx.device)
    local[fit.to(cidx.device)] = torch.arange(fit.numel(), device=cidx.device)
    keep = local[cidx] >= 0
    if not bool(keep.any()):
        raise ParameterError("no CRAFT crop comes from a fit image; check craft_index")
    return craft_A[keep], local[cidx[keep]]


def _reference_row(
    ref: str,
    ev: _Eval,
    k: int,
    craft_A: torch.Tensor | None,
    cidx: torch.Tensor | None,
    with_stability: bool,
    n_images: float,
) -> dict[str, Any]:
    """The row of one λ = 0 reference method, fitted where it declares (``fit_on``) on the fit images."""
    cls = get(ALIASES.get(ref, ref))
    on_crops = cls.fit_on == "crops"
    seed, A = ev.seed, ev.A_fit
    t0 = time.perf_counter()
    d: Any = cls(n_concepts=k, seed=seed)
    if on_crops:
        d.fit(A if craft_A is None else craft_A)
        elapsed = time.perf_counter() - t0
        U_fitted = plain_codes(d, A)  # a bank fitted on crops has no codes of the images but these
    else:
        U_fitted = d.fit_encode(A)
        elapsed = time.perf_counter() - t0
    row = {
        "method": ref,
        "kl_weight": 0.0,
        **_measure(ev, d, U_fitted, 0.0),
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


def _swept_fit(make: Callable[[], Decomposition], A_fit: torch.Tensor) -> tuple[Any, torch.Tensor, float]:
    """``(fitted decomposition, its codes of A_fit, the fit's wall time)``."""
    d: Any = make()
    t0 = time.perf_counter()
    U_fitted = d.fit_encode(A_fit)
    return d, U_fitted, time.perf_counter() - t0


def _swept_job(make: Callable[[], Decomposition], lam: float, ev: _Eval, with_stability: bool,
               n_images: float) -> dict[str, Any]:
    """The row of FACE at ``lam``: its fit on the fit images, then its measures."""
    return _swept_row(make, lam, ev, with_stability, n_images, _swept_fit(make, ev.A_fit))


def _swept_row(
    make: Callable[[], Decomposition],
    lam: float,
    ev: _Eval,
    with_stability: bool,
    n_images: float,
    fitted: tuple[Any, torch.Tensor, float],
) -> dict[str, Any]:
    """The row of FACE at one ``λ`` (``make()`` builds the configured, unfitted decomposition; ``fitted``
    is :func:`_swept_fit`'s result)."""
    d, U_fitted, elapsed = fitted
    row = {
        "method": _SWEPT,
        "kl_weight": float(lam),
        **_measure(ev, d, U_fitted, float(lam)),
        "stability": math.nan,
        "seconds": elapsed,
        "n_iter": float(d.n_iter_),
        "n_images": n_images,
    }
    if with_stability:
        row["stability"] = stability(lambda a: make().fit(a).components_, ev.A_fit)
    return row


def _make(swept: Any, k: int, seed: int, param: str, lam: float, params: dict[str, Any],
          head: Head) -> Decomposition:
    """The swept method, unfitted, at ``param = lam`` with the head set."""
    out: Decomposition = swept(n_concepts=k, seed=seed, **{param: lam}, **params).set_head(head)
    return out


def _split(
    pred: torch.Tensor, targets: list[int], holdout: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit / held-out image indices (stratified by predicted class); ``holdout = 0``: both are all images."""
    h = check_float("holdout", holdout, 0.0, maximum=1.0, hint="the held-out share of the images; 0 scores "
                    "on the fitted images")
    if h == 1.0:
        raise ParameterError("holdout must be < 1: some images must be fitted on (0.5 is the default)")
    if h == 0.0:
        every = torch.arange(pred.numel(), device=pred.device)
        return every, every
    fit, held = holdout_split(pred, h, seed=seed)
    for c in targets:
        m = int((pred == c).sum())
        if m < 2:
            raise TargetError(
                f"class {c} has {m} image classified as it: a held-out split needs at least 2 (one to fit "
                "on, one to score on); pass more images of the class, or holdout=0 to score on the fitted "
                "images"
            )
    return fit, held


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
    holdout: float = HOLDOUT,
    with_stability: bool = False,
    n_designs: int = 32,
    batch_size: int = 64,
    progress: bool = False,
    config: dict[str, Any] | None = None,
    **face_params: Any,
) -> SweepResult:
    """FACE at each ``λ`` plus the λ = 0 reference rows (ICE, CRAFT), measured with FACE's metrics.

    One row per method and ``λ``, as in the paper's tables, every method judged the same way. The images
    are split (seeded by ``seed``, stratified by predicted class, ``holdout`` of them held out; see
    :func:`~conceptlens.metrics.face.holdout_split`): each method is fitted on the *fit* images only (CRAFT
    on the crops of those images), its concepts are ranked by global Sobol total-index importance for the
    target (``n_designs`` designs) on the plain codes of the class's fit images, and every headline number
    (MSE, KL, accuracy, C-Ins, C-Del, C-Gini, sparsity, top-1 kept) is measured on the **plain codes**
    (:func:`plain_codes`: non-negative least squares with the bank frozen, no KL) of the **held-out**
    images, on the class's correctly classified ones for the class-dependent numbers. The columns
    ``fitted_accuracy``, ``fitted_c_ins`` and ``fitted_c_del`` are a labelled extra: the fit's own codes of
    the fit images (for FACE, KL-fitted against the predictions of those very images), as earlier
    versions reported them; they are never the headline.

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
        Seed of the split, of every fit and of the Sobol design.
    references : sequence of str
        Reference rows among ``"ice"``, ``"craft"`` (``()`` for none).
    craft_A : Tensor ``[M, h, w, C]``, optional
        Activations of CRAFT's crops (each resized to the input size). ``None``: the ``N`` images
        themselves are the crops (right when they are crops already, as the demo crops are).
    craft_index : Tensor ``[M]``, optional
        The image each crop was cut from (with ``craft_A``; the split and stability split crops by image).
    holdout : float
        Fraction of each predicted class's images held out for scoring (default
        :data:`~conceptlens.metrics.face.HOLDOUT` = 0.5); ``0``: no split, every number on the fitted
        images (still plain codes for the headline).
    with_stability : bool
        Also measure stability (5 more fits per row, on the fit images: slower).
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
        requested, ``n_images`` the class's held-out images), references first, then FACE in the order of
        ``kl_weights``; ``config["split"]`` holds the ``fit`` and ``held_out`` image indices.
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
    empty = [c for c in targets if not bool((pred == c).any())]
    if empty:
        raise TargetError(
            f"no image is classified as class {empty[0]} by the head; choose images of that class"
        )
    fit, held = _split(pred, targets, holdout, seed)
    A_fit, A_held = A[fit.to(A.device)], A[held.to(A.device)]
    pred_fit, pred_held = pred[fit], pred[held]
    ev = _Eval(
        head=head, A_fit=A_fit, A_held=A_held,
        sels_fit={c: torch.nonzero(pred_fit == c).flatten() for c in targets},
        sels_held={c: torch.nonzero(pred_held == c).flatten() for c in targets},
        # KL of every row against p = softmax h(A_held), computed once.
        term=KLTerm(head, A_held, face_params.get("batch_images", 256)),
        seed=seed, n_designs=n_designs, batch_size=batch_size,
    )
    crops_fit, cidx_fit = _fit_crops(craft_A, cidx, fit, N)
    n_images = float(sum(int(v.numel()) for v in ev.sels_held.values()))
    swept: Any = get(_SWEPT)
    param = swept.sweep_param
    if param is None:
        raise ParameterError(f"{swept.display_name()} declares no sweep_param: there is no λ to sweep")
    rows: list[dict[str, Any]] = []

    def say(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress:
            print(format_table([row], header=len(rows) == 1), flush=True)

    # the measures are loops of small ops: one thread (beside a busy process the sweep's two-thread
    # measures took 4× their time alone; see conceptlens._threads)
    makers = [functools.partial(_make, swept, k, seed, param, float(lam), face_params, head) for lam in lams]
    jobs = [functools.partial(_reference_row, ref, ev, k, crops_fit, cidx_fit, with_stability, n_images)
            for ref in refs]
    jobs += [functools.partial(_swept_job, m, lam, ev, with_stability, n_images)
             for m, lam in zip(makers, lams, strict=True)]
    if swept.fit_threads == 1:
        # every row (fit, then measures) runs in one thread: side by side in worker threads they give the
        # rows one after the other would, in about half the time on two cores; the largest λ (the most
        # iterations) first, so that the other rows fill the second core meanwhile
        order = [*sorted(range(len(refs), len(jobs)), key=lambda j: -lams[j - len(refs)]), *range(len(refs))]
        done = one_thread_each([jobs[j] for j in order])
        rows_out = [done[order.index(j)] for j in range(len(jobs))]
    else:  # the fits with the process's threads, the rest in one
        fitted = [_swept_fit(m, ev.A_fit) for m in makers]
        with small_ops():
            rows_out = [job() for job in jobs[: len(refs)]] + [
                _swept_row(m, lam, ev, with_stability, n_images, f)
                for m, lam, f in zip(makers, lams, fitted, strict=True)]
    for row in rows_out:
        say(row)

    cfg = {
        "n_concepts": k,
        "seed": seed,
        "targets": targets,
        "kl_weights": list(lams),
        "references": refs,
        "with_stability": bool(with_stability),
        "n_designs": n_designs,
        "n_images": int(N),
        "holdout": float(holdout),
        "n_fit_images": int(fit.numel()),
        "n_held_out_images": int(held.numel()),
        "split": {"fit": fit.tolist(), "held_out": held.tolist()},
        "codes": "plain (NNLS, no KL) codes of the held-out images; fitted_*: the fit's own codes of the fit "
                 "images (FACE: KL-fitted)",
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
    holdout: float = HOLDOUT,
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
        Per ``λ``, measured on the plain codes of the held-out images: ``kl_weight``, ``mse``, ``kl``,
        ``total``, ``accuracy``, ``agreement`` (top-1 of ``h(Â)`` = top-1 of ``h(A)`` over *all* held-out
        images), ``c_ins``, ``c_del``, ``c_gini``, ``sparsity``, ``stability`` (NaN unless requested),
        ``fitted_accuracy``, ``fitted_c_ins``, ``fitted_c_del`` (the extra: KL-fitted codes of the fit
        images), ``time`` (fit seconds), ``n_iter``, ``n_images`` (the class's held-out images).
    """
    res = face_sweep(
        A,
        head,
        target,
        kl_weights,
        n_concepts,
        seed,
        references=(),
        holdout=holdout,
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
