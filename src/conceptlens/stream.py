"""The explainer on data of any size: fit and explain from an image source, batch by batch.

Notation as in :mod:`conceptlens.explainer`: ``x_b [b,3,H,W]`` a batch of images, ``A [N,h,w,C]`` their
activations (in memory below ``memory_budget``, else rows ``[N·h·w, C]`` in an on-disk
:class:`~conceptlens.io.store.ActivationStore`), ``W [k,C]`` the bank, ``U [N,h,w,k]`` the codes (``k/C`` of
``A``'s size: kept in memory, importance needs them), ``M`` crops for crop-fitted methods.

What a fit holds at once: one batch of images and its activations, the logits ``[N, K]``, the codes ``U``
and ``A`` while it fits in the budget. Above the budget the bank is fitted from the store by the method's
out-of-core algorithm (NMF / CRAFT: mini-batch HALS, PCA: streamed covariance, k-means: streamed Lloyd,
FACE: mini-batch passes over whole images with the extraction's logits, EDDP: mini-batch steps from blocks
of the store; memory ``O(batch + k·C)``); a method without one refuses with a message saying what to do.
A method's out-of-core algorithm gives the same bank whether its rows come from memory or a store: with
``method_params={"batch_size": b}`` the in-memory fit runs it too (PCA has no such parameter: its
streamed covariance equals the in-memory one up to the order of sums).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from conceptlens import decompose
from conceptlens.errors import ActivationError, ParameterError
from conceptlens.importance.linear import scores as spatial_scores
from conceptlens.io.crops import CropSet, stream_crop_activations
from conceptlens.io.sources import RowBuffer, as_source, extract, parse_bytes
from conceptlens.metrics.ice import fid_r, sparsity
from conceptlens.split.sites import resolve_target

__all__ = ["fit_source", "explain_source", "evaluate_source", "scan_source", "concat_explanations",
           "MetricSums", "check_sign", "fits_store", "STREAM_OPTIONS"]

#: The keyword options of ``fit`` / ``explain`` for image sources (see :func:`fit_source`).
STREAM_OPTIONS = ("batch_size", "num_workers", "memory_budget", "store_dir", "target_images", "class_folder")


def check_sign(method: str, layer: str, minimum: float) -> None:
    """ActivationError when a non-negative method meets activations down to ``minimum < 0``."""
    if decompose.get(method).nonnegative and minimum < 0:
        raise ActivationError(
            f"method {method!r} needs non-negative activations, but layer {layer!r} has values down to "
            f"{minimum:.4g}. Choose a layer after a ReLU-like activation (layer='auto' picks the last one) "
            "or use method='pca' (allows negative values)"
        )


def fits_store(cls: type) -> bool:
    """Whether a decomposition fits from an ActivationStore: it declares ``fits_store`` (PCA, k-means,
    FACE, EDDP) or has NMF's mini-batch fit (NMF, CRAFT). A method may also declare ``fit_context``, the
    names of what its ``fit`` takes beside the rows (``"image_shape"``, ``"logits"``)."""
    return bool(getattr(cls, "fits_store", hasattr(cls, "_fit_online")))


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(STREAM_OPTIONS))
    if unknown:
        raise ParameterError(f"unknown option(s) {unknown}; fit / explain accept {', '.join(STREAM_OPTIONS)}")
    ti = options.get("target_images", "all")
    if ti not in ("all", "label"):
        raise ParameterError(f"target_images must be 'all' or 'label' (keep the images whose label is the "
                             f"target), got {ti!r}")
    return options


def _source(ex: Any, data: Any, select: int | None, o: dict[str, Any]) -> Any:
    return as_source(data, ex.split.preset, batch_size=o.get("batch_size") or ex.split.batch_size,
                     num_workers=o.get("num_workers"), class_folder=o.get("class_folder"),
                     progress=ex.progress, select=select)


def _n_outputs(split: Any) -> int:
    with torch.no_grad():
        return int(split.h(torch.zeros(1, *split.activation_shape)).shape[1])


def fit_source(ex: Any, data: Any, target: int | str | None = None, *, recursive: bool = False,
               A: torch.Tensor | None = None, **options: Any) -> Any:
    """:meth:`ConceptExplainer.fit <conceptlens.ConceptExplainer.fit>` on an image source, streamed.

    Parameters
    ----------
    ex
        The explainer (fitted in place).
    data
        A tensor ``[N,3,H,W]``, a path / folder / glob / list of paths, an ImageFolder tree, a Dataset, a
        DataLoader or an :class:`~conceptlens.io.sources.ImageSource`.
    target
        Class index or name (None: the class the model predicts most often).
    recursive, A
        Not available on a stream (ParameterError): pass a tensor.
    **options
        ``batch_size`` (images per forward pass; default the split's), ``num_workers`` (DataLoader
        workers), ``memory_budget`` (bytes or ``"2GB"`` of activations kept in memory; default a quarter of
        the RAM), ``store_dir`` (the store's folder; default a temporary one, removed after the fit),
        ``target_images`` (``"all"``, or ``"label"``: only the images labelled ``target``),
        ``class_folder`` (ImageFolder layout: the subfolder to read).

    Returns
    -------
    ConceptExplainer
        ``ex``, fitted as by ``fit`` (``crops_`` for crop methods; no ``tree_``), plus ``stream_`` (a dict):
        seconds spent per stage (``extract``: reading the images and running ``g``, ``h``; ``crops``;
        ``fit``; ``encode``: codes and importance), ``n_images``, ``on_disk`` (whether the store was used).

    Raises
    ------
    ParameterError
        ``recursive`` or ``A`` with a stream; ``target_images="label"`` without a target; a method without
        an out-of-core fit above the budget.
    ImageError
        Bad batches from a DataLoader, labels that select no image.
    """
    o = _options(options)
    if recursive or A is not None:
        raise ParameterError("recursive=True and A= work on images in one tensor, without streaming "
                             f"options ({', '.join(STREAM_OPTIONS)}): load them with "
                             "cl.data.load_images(...) and drop those options, or fit without recursive / A")
    split = ex.split
    select = None
    if o.get("target_images", "all") == "label":
        if target is None:
            raise ParameterError("target_images='label' keeps the images labelled with the target: "
                                 "give target=")
        select = resolve_target(target, ex.classes, _n_outputs(split))
    src = _source(ex, data, select, o)
    budget = parse_bytes(o.get("memory_budget"))
    store_dir = o.get("store_dir")
    t = [time.perf_counter()]
    ext = extract(split, src, memory_budget=budget, store_dir=store_dir)
    t.append(time.perf_counter())
    crop_buf: RowBuffer | None = None
    try:
        logits = ext.logits
        if target is None:
            target = int(torch.bincount(logits.argmax(1), minlength=logits.shape[1]).argmax())
        ex.target_ = resolve_target(target, ex.classes, int(logits.shape[1]))
        cls = decompose.get(ex.method)
        check_sign(ex.method, split.layer, ext.minimum)
        d = cls(n_concepts=ex.n_concepts, seed=ex.seed, **ex.method_params)
        if cls.uses_head:
            d.set_head(split.h)
        ex.crops_, ex.tree_ = None, None
        b = src.batch_size
        if cls.fit_on == "crops":
            crop_buf = RowBuffer(budget, None if store_dir is None else os.path.join(store_dir, "crops"))
            patch, stride = d.crop_params()
            index, boxes, predicted = stream_crop_activations(split, (x for x, _ in src.batches()), patch,
                                                              stride, sink=crop_buf.append,
                                                              border=getattr(d, "border", "auto"))
            rows: Any = crop_buf.data()
        else:
            rows = ext.data()
        t.append(time.perf_counter())
        if not isinstance(rows, torch.Tensor) and not fits_store(cls):
            raise ParameterError(
                f"method {ex.method!r} fits in memory only, and the activations of these {ext.n_images} "
                f"images exceed memory_budget={budget} bytes: raise memory_budget, use fewer images, or a "
                "method with an out-of-core fit ('nmf', 'craft', 'pca', 'kmeans', 'face', 'eddp')")
        # what a method's out-of-core fit needs beside the rows (FACE: the images' shape and logits)
        context = {"image_shape": tuple(ext.shape[:-1]), "logits": logits}
        d.fit(rows, **{key: context[key] for key in getattr(cls, "fit_context", ()) if cls.fit_on != "crops"})
        t.append(time.perf_counter())
        d.load_state_tensors({k: v.detach().clone() for k, v in d.state_tensors().items()})
        ex.decomposition_ = d
        U = d.encode(ext.data()) if ext.in_memory else ext.map(d.encode, b)
        ex.fit_scores_ = spatial_scores(U)
        ex.fit_logits_ = logits[:, ex.target_]
        imp = ex._importance(U)
        ex.importance_result_, ex.importance_, ex.weights_ = imp, imp.values, imp.weights
        if crop_buf is not None:
            scores = d.encode(rows) if isinstance(rows, torch.Tensor) else torch.cat(
                [d.encode(r) for r in rows.iter_batches(8192)])
            ex.crops_ = CropSet(image_index=index, boxes=boxes, scores=scores, predicted=predicted)
        t.append(time.perf_counter())
        stages = zip(("extract", "crops", "fit", "encode"), t[:-1], t[1:], strict=True)
        ex.stream_ = {**{k: round(t1 - t0, 4) for k, t0, t1 in stages}, "n_images": ext.n_images,
                      "on_disk": not (ext.in_memory and isinstance(rows, torch.Tensor))}
    finally:
        ext.close()
        if crop_buf is not None:
            crop_buf.close()
    return ex


def explain_source(ex: Any, data: Any, maps: str = "upsample", **options: Any) -> Any:
    """:meth:`ConceptExplainer.explain <conceptlens.ConceptExplainer.explain>` batch by batch over a source.

    ``options`` as in :func:`fit_source` (``target_images="label"`` keeps the images labelled with the
    fitted target; ``memory_budget`` and ``store_dir`` are not used). Returns one
    :class:`~conceptlens.explainer.LocalExplanation` for all images, rows in the source's order.
    """
    parts: list[Any] = []
    scan_source(ex, data, lambda x, A: parts.append(ex.explain(x, A=A, maps=maps)), what="explain", **options)
    return concat_explanations(parts)


def concat_explanations(parts: list[Any]) -> Any:
    """One :class:`~conceptlens.explainer.LocalExplanation` from those of consecutive batches (in order)."""
    first = parts[0]
    cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in
           ("scores", "contributions", "residual", "logits", "maps")}
    return type(first)(weights=first.weights, bias=first.bias, target=first.target, exact=first.exact, **cat)


def scan_source(ex: Any, data: Any, visit: Callable[[torch.Tensor, torch.Tensor], None], *,
                what: str = "explain", **options: Any) -> Any:
    """Call ``visit(x_b [b,3,H,W], A_b [b,h,w,C])`` on every batch of a source, in order; returns the source.

    ``options`` as in :func:`explain_source` (``target_images="label"``: only the images labelled with the
    fitted target); ``what`` names the caller in the error of an unfitted explainer. One batch of images
    and activations is held at a time.
    """
    o = _options(options)
    ex._fitted(what)
    src = _source(ex, data, ex.target_ if o.get("target_images", "all") == "label" else None, o)
    for x, _ in src.batches():
        with torch.no_grad():
            A = ex.activations(x)
        visit(x, A)
    return src


class MetricSums:
    """:func:`conceptlens.metrics.evaluate`'s numbers accumulated batch by batch (``add(A_b)``, then
    ``result()``): the same values as on all activations at once (sums of squares and counts in float64)."""

    def __init__(self, ex: Any) -> None:
        self.ex, self.c = ex, int(ex.target_)
        self.top: list[torch.Tensor] = []  # [b, 4]: argmax F, argmax F̂, F_c, F̂_c
        self.sq = torch.zeros(2, dtype=torch.float64)  # ‖A − Â‖², ‖A‖²
        self.nonzero, self.codes = 0.0, 0

    def add(self, A: torch.Tensor) -> None:
        """Account for the activations ``A [b,h,w,C]`` of one batch."""
        d, h = self.ex.decomposition_, self.ex.split.h
        with torch.no_grad():
            U = d.encode(A)
            A_hat = d.decode(U)
            F, Fh = h(A), h(A_hat)
        self.top.append(torch.stack([F.argmax(1).double(), Fh.argmax(1).double(), F[:, self.c].double(),
                                     Fh[:, self.c].double()], 1).cpu())
        self.sq += torch.stack([torch.linalg.vector_norm((A - A_hat).double()) ** 2,
                                torch.linalg.vector_norm(A.double()) ** 2]).cpu()
        self.nonzero += sparsity(U, dtype=torch.float64) * U.numel()
        self.codes += U.numel()

    def result(self) -> dict[str, float]:
        """``fid_c``, ``fid_r``, ``accuracy``, ``model_accuracy``, ``reconstruction_error``, ``sparsity``,
        ``n_images`` (as :func:`conceptlens.metrics.evaluate`)."""
        if not self.top:
            raise ParameterError("no images were measured: the source gave no batch")
        t = torch.cat(self.top)
        num, den = (float(v) for v in self.sq.sqrt())
        return {"fid_c": float((t[:, 0] == t[:, 1]).float().mean()), "fid_r": fid_r(t[:, 2], t[:, 3]),
                "accuracy": float((t[:, 1] == self.c).float().mean()),
                "model_accuracy": float((t[:, 0] == self.c).float().mean()),
                "reconstruction_error": num / den if den > 0 else num,
                "sparsity": self.nonzero / self.codes, "n_images": float(t.shape[0])}


def evaluate_source(ex: Any, data: Any, **options: Any) -> dict[str, float]:
    """:func:`conceptlens.metrics.evaluate` on an image source, batch by batch (the same numbers).

    Parameters
    ----------
    ex
        A fitted explainer.
    data
        Anything :func:`fit_source` reads (a tensor ``[N,3,H,W]``, files, a Dataset, a DataLoader, …).
    **options
        As in :func:`explain_source`.

    Returns
    -------
    dict
        ``fid_c``, ``fid_r``, ``accuracy``, ``model_accuracy``, ``reconstruction_error``, ``sparsity``,
        ``n_images``.
    """
    sums = MetricSums(ex)
    scan_source(ex, data, lambda _x, A: sums.add(A), what="evaluate", **options)
    return sums.result()
