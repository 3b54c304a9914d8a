"""The torch.fx side of :class:`~conceptlens.split.model_split.ModelSplit`: tracing the call sites of a model
and cutting its graph into ``g`` (input → the site) and ``h`` (the site → logits).

A call site is an fx node: a module call (named by the module's dotted path, ``@i`` when the module runs more
than once) or a function call (named by the node). ``h`` is a small GraphModule that runs only the rest of the
network, which is cheap enough for Sobol and FACE to call it thousands of times.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from conceptlens.errors import SplitError
from conceptlens.split.sites import _first_tensor

__all__ = ["trace_sites", "cut"]


class _NamingTracer(fx.Tracer):
    """fx tracer that records, for every module call, the node its output is (the call site)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, fx.Node]] = []

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.calls.append((self.path_of_module(m), out.node))
        return out


def trace_sites(model: nn.Module, probe: torch.Tensor
                ) -> tuple[fx.GraphModule, list[tuple[str, list[str], fx.Node, tuple[int, ...]]]]:
    """Trace ``model`` and run the graph once on ``probe[:1]``.

    Returns
    -------
    gm, sites
        The traced GraphModule and, per node with a tensor output in execution order,
        ``(canonical name, aliases, node, output shape with the batch of one)``; the outermost module
        (shortest dotted path) names a node that several modules return.
    """
    tracer = _NamingTracer()
    # optional arguments (timm ViT's attn_mask=None, return flags) are fixed at their defaults: otherwise
    # they are graph inputs that every block reads, and no block could be cut
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    graph = tracer.trace(model, concrete_args=concrete or None)
    gm = fx.GraphModule(model, graph)
    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class _Shapes(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)
            return out

    with torch.no_grad():
        _Shapes(gm).run(probe[:1])
    counts: dict[str, int] = {}
    for path, _node in tracer.calls:
        counts[path] = counts.get(path, 0) + 1
    by_node: dict[fx.Node, list[str]] = {}
    seen: dict[str, int] = {}
    for path, node in tracer.calls:
        i = seen.get(path, 0)
        seen[path] = i + 1
        by_node.setdefault(node, []).append(f"{path}@{i}" if counts[path] > 1 else path)
    sites = []
    for node in gm.graph.nodes:
        if node not in shapes or node.op in ("placeholder", "output", "get_attr"):
            continue
        names = sorted(by_node.get(node, []), key=lambda s: (s.count("."), len(s)))
        sites.append((names[0] if names else node.name, names[1:], node, shapes[node]))
    return gm, sites


def cut(gm: fx.GraphModule, at: fx.Node, name: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """``(g, h)`` GraphModules: ``g(x)`` = the node's output, ``h(A)`` = the logits from it.

    Raises
    ------
    SplitError
        When the rest of the network also reads something computed before the node (a skip connection).
    """
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    g_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if pos[n] > pos[at]:
            break
        env[n] = g_graph.node_copy(n, lambda a: env[a])
    g_graph.output(env[at])
    g_fx = fx.GraphModule(gm, g_graph)
    g_fx.graph.eliminate_dead_code()
    g_fx.recompile()
    out_node = next(n for n in nodes if n.op == "output")
    # h keeps only the output conceptlens reads (out["logits"], out[0]): other entries of a dict or tuple
    # may be computed before the cut without making the split wrong
    logits_arg = _logits_arg(out_node.args[0])
    needed: set[fx.Node] = set()
    stack: list[fx.Node] = []
    fx.node.map_arg(logits_arg, stack.append)
    while stack:
        n = stack.pop()
        if n in needed or n is at:
            continue
        needed.add(n)
        if not _is_batch_size(n):
            stack.extend(n.all_input_nodes)
    ancestors: set[fx.Node] = set()
    stack = [at]
    while stack:
        n = stack.pop()
        if n in ancestors:
            continue
        ancestors.add(n)
        stack.extend(n.all_input_nodes)
    h_graph = fx.Graph()
    a = h_graph.placeholder("A")
    env = {at: a}
    for n in nodes:
        if n not in needed or n.op == "output":
            continue
        # the rest of the network may read something computed before the cut; the only thing we can
        # rebuild from A is the batch size (EfficientNet's `inputs.size(0)`)
        if _is_batch_size(n):
            env[n] = h_graph.call_method("size", (a, 0))
            continue
        if n in ancestors or n.op == "placeholder":
            parent = name.split("@")[0].rsplit(".", 1)[0]
            raise SplitError(
                f"cannot cut the model at {name!r}: the rest of the network also reads {n.name!r}, "
                f"computed before it (a skip connection). Choose the output of a whole block"
                + (f", e.g. {parent!r}" if parent != name else "")
            )
        env[n] = h_graph.node_copy(n, lambda x: env[x])
    h_graph.output(fx.node.map_arg(logits_arg, lambda x: env[x]))
    return g_fx, fx.GraphModule(gm, h_graph)


def _logits_arg(out: Any) -> Any:
    """The part of an fx output's argument that :func:`_first_tensor` reads as the logits."""
    if isinstance(out, Mapping):
        return out["logits"] if "logits" in out else _first_tensor(dict(out))  # no logits: SplitError
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], fx.Node):
        return out[0]
    return out


def _is_batch_size(n: fx.Node) -> bool:
    """``inputs.size(0)`` on the model's input: the batch size, which h can read from A instead."""
    return (
        n.op == "call_method"
        and n.target == "size"
        and len(n.args) == 2
        and n.args[1] == 0
        and getattr(n.args[0], "op", None) == "placeholder"
    )
