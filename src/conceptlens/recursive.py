"""CRAFT's concept tree: ambiguous concepts split into sub-concepts at an earlier layer.

Notation: ``ex`` a fitted :class:`~conceptlens.ConceptExplainer` at layer ``L0`` with bank ``W [k, C]``;
``layers = [L1, L2, …]`` earlier and earlier layers; a *crop* is one row of ``ex.crops_`` (for a method fitted
on whole images, each fit image is one crop); ``n_top`` the number of top crops a concept is judged and
split on; ``k'`` (``n_children``) the number of sub-concepts of a split concept; ``C'`` the channels of the
child layer.

The rule (CRAFT's paper could not be read on this point; this is our choice)
---------------------------------------------------------------------------
A concept is **ambiguous** when its top crops are not one thing *to the model*: take the ``n_top`` crops
with the highest (positive) score for the concept and the model's top-1 class on each crop; the concept's
**ambiguity** is the entropy of that class distribution divided by ``log(n)`` (``n`` = number of top
crops), so it lies in ``[0, 1]``: 0 when every top crop is predicted as the same class, 1 when each is a
different class. This is the paper's own criterion ("a concept whose crops are shared by several
classes") made measurable with the model itself. A concept is split when its ambiguity is ``≥ threshold``
(default 0.5), at most ``max_split`` of them per level (the most important first; default: all), while
there is an earlier layer left.

Splitting: the concept's top crops are run through ``g'`` (the model up to the child layer), the explainer's
own method (``ex.method`` with its ``method_params``: NMF for ICE, CRAFT's NMF for CRAFT) with
``k'`` concepts is fitted on the per-position rows of those activations (``[n_top·h'·w', C']``; an earlier
layer has more positions per crop, and its concepts are parts of the parent; a method that uses the head
gets ``h'``), and the parent's top crops
are shared out among the sub-concepts: each crop goes to the sub-concept with its highest score (spatial
mean of the codes), and a sub-concept's top crops are those, best first. A sub-concept is judged on its
own crops (fewer than 2: never split). The sub-concepts' importance is
computed by a registered estimator through ``h'`` on those crops (default ``"gradient"``: one backward
pass; ``"sobol"`` runs ``n_top·n_designs·(k'+1)`` evaluations of ``h'``, which at an early layer is most of
the network). Sub-concepts are judged by the same rule and split again at the next layer.

The result is a tree of frozen :class:`ConceptNode` s whose root stands for the class: its ``bank`` is the
top-level bank ``W`` and its children are the ``k`` concepts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from conceptlens.errors import LayerError, NotFittedError, ParameterError

__all__ = [
    "ConceptNode",
    "ambiguity",
    "select_ambiguous",
    "build_tree",
    "tree_state",
    "tree_from_state",
]

_DEFAULTS: dict[str, Any] = {
    "n_top": 16,
    "n_children": 3,
    "threshold": 0.5,
    "max_split": None,
    "importance": "gradient",
    "n_prototypes": 5,
    "thumbnail": 64,
    "method_params": None,
}


@dataclass(frozen=True, eq=False)
class ConceptNode:
    """One concept of the tree (or the root, which stands for the class).

    Attributes
    ----------
    layer : str
        The layer the concept lives in (the root: the explainer's layer).
    index : int
        The concept's row in its parent's ``bank`` (``ex.concepts_`` for the top level); -1 for the root.
    importance : float
        Its importance among its siblings (top level: ``ex.importance_``; below: the sub-level estimator);
        NaN for the root.
    ambiguity : float
        Normalised entropy in ``[0, 1]`` of the model's classes on its top crops (see the module docstring);
        NaN for the root.
    crop_ids : torch.Tensor
        ``[n]`` long, ids (rows of ``ex.crops_``) of its top crops, best first.
    prototypes : torch.Tensor
        ``[p, t, t', 3]`` uint8 pictures of its first ``p`` top crops (the report draws them without the
        images); empty for the root.
    bank : torch.Tensor | None
        ``[k', C']`` the bank of its children at the child layer (the root: ``W [k, C]``); None for a leaf.
    children : tuple[ConceptNode, ...]
        Its sub-concepts (the root: the ``k`` concepts), in bank order.
    importance_method : str
        The estimator that gave the children's importance ("" for a leaf).
    """

    layer: str
    index: int
    importance: float
    ambiguity: float
    crop_ids: torch.Tensor
    prototypes: torch.Tensor
    bank: torch.Tensor | None = None
    children: tuple[ConceptNode, ...] = field(default_factory=tuple)
    importance_method: str = ""

    @property
    def is_leaf(self) -> bool:
        """True when the concept was not split."""
        return not self.children

    @property
    def child_layer(self) -> str | None:
        """The layer of the children (None for a leaf)."""
        return self.children[0].layer if self.children else None

    def walk(self) -> Iterator[tuple[tuple[int, ...], ConceptNode]]:
        """Depth-first ``(path, node)`` pairs; ``path`` is the tuple of child indices from the root."""
        stack: list[tuple[tuple[int, ...], ConceptNode]] = [((), self)]
        while stack:
            path, node = stack.pop()
            yield path, node
            stack.extend((path + (i,), c) for i, c in reversed(list(enumerate(node.children))))

    def __getitem__(self, path: int | tuple[int, ...]) -> ConceptNode:
        """``tree[2]`` is concept 2, ``tree[2, 0]`` its first sub-concept."""
        node = self
        for i in (path,) if isinstance(path, int) else path:
            node = node.children[i]
        return node

    def render(self) -> str:
        """A plain-text outline of the tree (one line per node)."""
        lines = []
        for path, node in self.walk():
            if not path:
                lines.append(f"class node at {node.layer} ({len(node.children)} concepts)")
                continue
            name = "concept " + ".".join(map(str, path))
            tail = f", split into {len(node.children)}" if node.children else ""
            lines.append(f"{'  ' * (len(path) - 1)}- {name} @ {node.layer}: importance "
                         f"{node.importance:.3g}, ambiguity {node.ambiguity:.2f}{tail}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        n = sum(1 for _ in self.walk()) - 1
        return (f"ConceptNode(layer={self.layer!r}, index={self.index}, children={len(self.children)}, "
                f"nodes={n})")


# ------------------------------------------------------------------------------------------------ the rule
def ambiguity(predicted: torch.Tensor) -> float:
    """Normalised entropy of predicted classes ``[n]`` (long): 0 = all the same, 1 = all different.

    ``H(p) / log(n)`` with ``p`` the empirical class distribution; 0 for ``n ≤ 1``.
    """
    p = predicted.reshape(-1).long()
    n = int(p.numel())
    if n <= 1:
        return 0.0
    counts = torch.bincount(p - p.min()).double()
    q = counts[counts > 0] / n
    return max(0.0, float(-(q * q.log()).sum() / math.log(n)))  # max: no "-0.0" for a single class


def select_ambiguous(
    ambiguities: Sequence[float] | torch.Tensor,
    importances: Sequence[float] | torch.Tensor,
    threshold: float = 0.5,
    max_split: int | None = None,
) -> list[int]:
    """Concepts to split: ambiguity ``≥ threshold``, the most important first, at most ``max_split``.

    Parameters
    ----------
    ambiguities, importances
        ``[k]`` each.
    threshold
        In ``[0, 1]``.
    max_split
        Cap on the number returned (None: no cap).

    Returns
    -------
    list[int]
        Concept indices, by decreasing importance.
    """
    a = torch.as_tensor(ambiguities, dtype=torch.float64).reshape(-1)
    imp = torch.as_tensor(importances, dtype=torch.float64).reshape(-1)
    if a.shape != imp.shape:
        raise ParameterError(
            f"ambiguities and importances must have the same length, got {a.numel()} and {imp.numel()}"
        )
    cand = [int(i) for i in torch.argsort(-imp, stable=True) if float(a[i]) >= threshold]
    return cand if max_split is None else cand[: int(max_split)]


# ------------------------------------------------------------------------------------------------ building
def _check_params(params: dict[str, Any] | None) -> dict[str, Any]:
    opts = dict(_DEFAULTS)
    unknown = set(params or {}) - set(_DEFAULTS)
    if unknown:
        raise ParameterError(
            f"unknown recursion option(s) {sorted(unknown)}; known: {', '.join(sorted(_DEFAULTS))}"
        )
    opts.update(params or {})
    for name in ("n_top", "n_children", "n_prototypes", "thumbnail"):
        v = opts[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ParameterError(f"recursion option {name} must be a positive integer, got {v!r}")
    if opts["n_top"] < 2:
        raise ParameterError("recursion option n_top must be at least 2 (a concept is split on its crops)")
    t = opts["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
        raise ParameterError(f"recursion option threshold must be in [0, 1], got {t!r}")
    m = opts["max_split"]
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
        raise ParameterError(f"recursion option max_split must be None or an integer ≥ 0, got {m!r}")
    return opts


def _thumbnails(x: torch.Tensor, crops: Any, ids: torch.Tensor, preset: Any, side: int) -> torch.Tensor:
    """``[n, t, t', 3]`` uint8 pictures of crops ``ids`` (denormalised with the preset, ≤ ``side`` px)."""
    from conceptlens.io.crops import crop_images

    if ids.numel() == 0:
        return torch.zeros(0, side, side, 3, dtype=torch.uint8)
    patches = crop_images(x, crops.image_index[ids], crops.boxes[ids]).detach().float().cpu()
    if preset is not None and getattr(preset, "mean", None) is not None and patches.shape[1] == 3:
        mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
        std = torch.tensor(preset.std).view(1, 3, 1, 1)
        pics = patches * std + mean
    else:  # no preset: min-max per crop
        lo = patches.amin((1, 2, 3), keepdim=True)
        hi = patches.amax((1, 2, 3), keepdim=True)
        pics = (patches - lo) / (hi - lo).clamp_min(1e-12)
    if pics.shape[1] == 1:
        pics = pics.expand(-1, 3, -1, -1)
    pics = pics[:, :3]
    h, w = pics.shape[-2:]
    if max(h, w) > side:
        s = side / max(h, w)
        pics = torch.nn.functional.interpolate(pics, size=(max(1, round(h * s)), max(1, round(w * s))),
                                               mode="bilinear", align_corners=False, antialias=True)
    return (pics.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _layer_order(split: Any, layers: Sequence[str]) -> list[str]:
    """Canonical names of ``layers``, checked to be earlier than the split's layer, deep to shallow."""
    from conceptlens.split.model_split import ModelSplit

    names = split.layers()
    pos = {n: i for i, n in enumerate(names)}
    out = []
    prev = pos[split.layer]
    prev_name = split.layer
    for L in layers:
        # resolve aliases and "@" forms without building a split
        site = ModelSplit._resolve(split, L)
        if pos[site.name] >= prev:
            raise LayerError(
                f"recursion layer {L!r} does not come before {prev_name!r}: give layers from deep to "
                f"shallow, each earlier in the network than the previous one (see `conceptlens layers`)"
            )
        out.append(site.name)
        prev, prev_name = pos[site.name], site.name
    return out


def build_tree(
    ex: Any,
    x: torch.Tensor,
    layers: Sequence[str] | str,
    params: dict[str, Any] | None = None,
) -> ConceptNode:
    """Grow the concept tree of a fitted explainer (see the module docstring for the rule).

    Parameters
    ----------
    ex
        A fitted :class:`~conceptlens.ConceptExplainer` with ``crops_`` (``ex.fit(..., recursive=True)``
        calls this).
    x
        ``[N,3,H,W]`` the fit images (the crops are cut from them).
    layers
        One earlier layer name or several, deep to shallow (``"L1"``, ``"L1,L2"`` or ``["L1", "L2"]``).
    params
        Options: ``n_top`` (16), ``n_children`` (3), ``threshold`` (0.5), ``max_split`` (None),
        ``importance`` ("gradient"), ``n_prototypes`` (5), ``thumbnail`` (64 px), ``method_params``
        (keyword arguments of the sub-level decomposition, on top of the explainer's ``method_params``).

    Returns
    -------
    ConceptNode
        The root.
    """
    from conceptlens import decompose
    from conceptlens import importance as importance_mod
    from conceptlens.importance.base import Context
    from conceptlens.split.model_split import ModelSplit

    if getattr(ex, "decomposition_", None) is None or getattr(ex, "crops_", None) is None:
        raise NotFittedError("build_tree needs a fitted explainer with crops: call ex.fit(x, target) first")
    opts = _check_params(params)
    if isinstance(layers, str):
        layers = [s.strip() for s in layers.split(",") if s.strip()]
    if not layers:
        raise ParameterError(
            "recursive=True needs at least one earlier layer: layers=['name'] (see `conceptlens layers`)"
        )
    order = _layer_order(ex.split, list(layers))
    importance_mod.get(opts["importance"])
    cls = decompose.get(ex.method)
    # the explainer's own method and parameters (a crop-fitted method's crop sizes only tell the explainer
    # how to cut its fit images: fit() takes the rows it is given), then the recursion's own
    sub_params = {**dict(getattr(ex, "method_params", None) or {}), **(opts["method_params"] or {})}
    crops = ex.crops_
    preset = getattr(ex.split, "preset", None)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    cache: dict[str, Any] = {}

    def child_split(name: str) -> Any:
        if name not in cache:
            # probe with the fit images: the child layer's shapes are those of crops resized to their size
            cache[name] = ModelSplit(ex.split.model, name, probe=x[:2], batch_size=ex.split.batch_size,
                                     progress=False)
        return cache[name]

    def node(layer: str, index: int, importance: float, ids: torch.Tensor) -> ConceptNode:
        amb = ambiguity(crops.predicted[ids]) if ids.numel() else 0.0
        thumbs = _thumbnails(x, crops, ids[: opts["n_prototypes"]], preset, opts["thumbnail"])
        return ConceptNode(layer=layer, index=index, importance=float(importance), ambiguity=amb,
                           crop_ids=ids.clone(), prototypes=thumbs)

    def split_node(parent: ConceptNode, depth: int) -> ConceptNode:
        """Fit the sub-concepts of ``parent`` at ``order[depth]`` and recurse."""
        from conceptlens.io.crops import crop_images

        ids = parent.crop_ids
        sp = child_split(order[depth])
        imgs = crop_images(x, crops.image_index[ids], crops.boxes[ids], size)
        A = sp.g(imgs, progress=False)
        k2 = min(opts["n_children"], int(A.shape[-1]))
        d = cls(n_concepts=k2, seed=ex.seed, **sub_params)
        if cls.uses_head:
            d.set_head(sp.h)
        # per-position rows, whatever the method fits on at the top level (a crop-fitted method would
        # otherwise average each crop to one row)
        d.fit(A.reshape(-1, A.shape[-1]) if cls.fit_on == "crops" else A, layer_name=sp.layer)
        U = d.encode(A)  # [n, h', w', k']
        ctx = Context(U=U, decomposition=d, split=sp, target=ex.target_, seed=ex.seed, progress=False,
                      options=dict(ex.importance_params) if opts["importance"] == ex.importance else {})
        imp = importance_mod.get(opts["importance"])(ctx)
        sub_scores = U.reshape(U.shape[0], -1, k2).mean(1).detach().cpu()  # [n, k']
        # the parent's crops are shared out: each goes to the sub-concept with its highest score
        dominant = torch.where(sub_scores.amax(1) > 0, sub_scores.argmax(1), torch.full_like(ids, -1))
        children = []
        for j in range(k2):
            mine = torch.nonzero(dominant == j).reshape(-1)
            mine = mine[torch.argsort(sub_scores[mine, j], descending=True, stable=True)]
            children.append(node(sp.layer, j, float(imp.values[j]), ids[mine]))
        children = grow(children, depth + 1)
        return ConceptNode(layer=parent.layer, index=parent.index, importance=parent.importance,
                           ambiguity=parent.ambiguity, crop_ids=parent.crop_ids, prototypes=parent.prototypes,
                           bank=d.components_.detach().clone(), children=tuple(children),
                           importance_method=imp.method)

    def grow(nodes: list[ConceptNode], depth: int) -> list[ConceptNode]:
        if depth >= len(order):
            return nodes
        chosen = select_ambiguous([n.ambiguity if n.crop_ids.numel() >= 2 else -1.0 for n in nodes],
                                  [n.importance for n in nodes], opts["threshold"], opts["max_split"])
        out = list(nodes)
        for i in chosen:
            out[i] = split_node(nodes[i], depth)
        return out

    imp0 = ex.importance_.detach().cpu()
    top = [node(ex.split.layer, j, float(imp0[j]), crops.top(j, opts["n_top"]))
           for j in range(ex.concepts_.shape[0])]
    top = grow(top, 0)
    return ConceptNode(layer=ex.split.layer, index=-1, importance=float("nan"), ambiguity=float("nan"),
                       crop_ids=torch.zeros(0, dtype=torch.long),
                       prototypes=torch.zeros(0, opts["thumbnail"], opts["thumbnail"], 3, dtype=torch.uint8),
                       bank=ex.concepts_.detach().clone(), children=tuple(top),
                       importance_method=str(getattr(ex.importance_result_, "method", ex.importance)))


# ------------------------------------------------------------------------------------------------ save / load
def tree_state(root: ConceptNode) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The tree as JSON-friendly structure + named tensors (for safetensors): ``(structure, tensors)``."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(path: tuple[int, ...], n: ConceptNode) -> dict[str, Any]:
        key = "tree." + ("root" if not path else "_".join(map(str, path)))
        tensors[key + ".crop_ids"] = n.crop_ids.detach().cpu().long().contiguous()
        tensors[key + ".prototypes"] = n.prototypes.detach().cpu().contiguous()
        if n.bank is not None:
            tensors[key + ".bank"] = n.bank.detach().cpu().contiguous()
        return {"key": key, "layer": n.layer, "index": n.index,
                "importance": None if math.isnan(n.importance) else n.importance,
                "ambiguity": None if math.isnan(n.ambiguity) else n.ambiguity,
                "importance_method": n.importance_method, "has_bank": n.bank is not None,
                "children": [enc(path + (i,), c) for i, c in enumerate(n.children)]}

    return enc((), root), tensors


def tree_from_state(structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ConceptNode:
    """Inverse of :func:`tree_state`; raises ParameterError on a malformed structure."""
    try:
        def dec(s: dict[str, Any]) -> ConceptNode:
            key = s["key"]
            return ConceptNode(
                layer=str(s["layer"]), index=int(s["index"]),
                importance=float("nan") if s["importance"] is None else float(s["importance"]),
                ambiguity=float("nan") if s["ambiguity"] is None else float(s["ambiguity"]),
                crop_ids=tensors[key + ".crop_ids"], prototypes=tensors[key + ".prototypes"],
                bank=tensors[key + ".bank"] if s["has_bank"] else None,
                children=tuple(dec(c) for c in s["children"]), importance_method=str(s["importance_method"]))

        return dec(structure)
    except (KeyError, TypeError, ValueError) as exc:
        raise ParameterError(f"the saved concept tree is malformed ({exc!r})") from exc
