"""ModelSplit: a classifier cut at one layer into ``g`` (input → activations) and ``h`` (activations →
logits).

Notation: ``A = g(x)``, ``logits = h(A)``; ``x [N,3,H,W]``; ``A`` channels-last: ``[N,h,w,C]`` for a spatial
layer, ``[N,C]`` for a flat one, ``[N,T,C]`` for a token layer (returned as the model computes it).

**Layers are call sites, not just modules.** A module can run several times in one forward pass
(EfficientNet-Lite0's ``_swish`` runs after the stem and after the head conv; torchvision's BasicBlock runs
its ``relu`` twice), and an activation can be a plain function call (``F.relu``, ``x + y``). A layer is
named by the module's dotted name, with ``@i`` (0-based call index, ``@-1`` = last) when the module runs
more than once, or by the torch.fx node name of a function call (``add_7``). ``"auto"`` is the last spatial
call site (h·w > 1) before global pooling, i.e. after the head's activation.

Two ways to cut:

* **fx** (when ``torch.fx`` traces the model): the graph is split at the node; ``h`` is a small
  GraphModule that runs only the rest of the network (cheap: Sobol and FACE call it thousands of times).
* **hooks** (any other model): ``g`` runs the model with a forward hook that captures the call site's output
  and stops; ``h`` runs the model on a zero input with a hook that substitutes the output. Correct only when
  the rest of the network depends on nothing else, which the construction-time check verifies.

At construction ``h(g(x)) == model(x)`` is checked on a probe input; a mismatch is a :class:`SplitError`.

A float64 / float16 / bfloat16 model runs as it is: images and activations are cast to the model's dtype on
the way in; ``g`` / ``h`` return float32 for half-precision models (the dtype the rest of conceptlens computes
in) and the model's own dtype otherwise (a float64 model keeps its precision).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn

from conceptlens._check import check_int
from conceptlens.errors import ImageError, LayerError, ParameterError, SplitError, nearest
from conceptlens.io.models import check_weights
from conceptlens.progress import progress_bar
from conceptlens.split.sites import _first_tensor, call_order

__all__ = ["ModelSplit", "LinearHead", "list_layers"]


@dataclass(frozen=True)
class LinearHead:
    """``h(A) = mean_hw(A) @ weight.T + bias`` exactly (a GAP + linear head, or a linear one).

    Attributes
    ----------
    weight : torch.Tensor
        ``[K, C]`` (the classifier's rows ``w_k``).
    bias : torch.Tensor
        ``[K]``.
    """

    weight: torch.Tensor
    bias: torch.Tensor


@dataclass
class _Site:
    name: str  # canonical name of the call site
    aliases: list[str]
    node: fx.Node | None  # fx mode
    module: nn.Module | None  # hook mode
    call: int  # hook mode: which call of the module
    shape: tuple[int, ...]  # output shape on the probe (batch 1)


class _Stop(Exception):
    """Raised inside a hook to stop the forward pass once g's output is captured."""


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


def _to_channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1) if t.ndim == 4 else t


def _from_channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t


class ModelSplit:
    """A classifier cut at ``layer`` into ``g`` and ``h``.

    Parameters
    ----------
    model
        An image classifier ``model(x [N,3,H,W]) -> logits [N,K]``. Switched to eval mode (with a warning)
        if it is training.
    layer
        ``"auto"``, a dotted module name (``"layer4"``, ``"_swish@1"``), an fx node name, or the module
        object itself.
    probe
        An input ``[n,3,H,W]`` used to find shapes and check the split (default: seeded noise of the
        model's preset size).
    batch_size
        Images per forward pass in :meth:`g` (memory bound).
    check
        Verify ``h(g(probe)) == model(probe)`` within ``atol`` (absolute, scaled by the logits' range).
    mode
        ``"auto"`` (fx when it traces, else hooks), ``"fx"`` or ``"hooks"``.
    progress
        Default for progress bars in :meth:`g` (None: only on a terminal).

    Attributes
    ----------
    layer : str
        The canonical name of the chosen call site.
    mode : str
        ``"fx"`` or ``"hooks"``.
    activation_shape : tuple
        Shape of ``A`` for one image (channels-last, without the batch dimension).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module = "auto",
        *,
        probe: torch.Tensor | None = None,
        batch_size: int = 32,
        check: bool = True,
        atol: float = 1e-5,
        mode: str = "auto",
        progress: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model.training:
            warnings.warn(
                "the model was in training mode (dropout/batch-norm would make explanations random); "
                "switched it to eval mode",
                stacklevel=2,
            )
            model.eval()
        if mode not in ("auto", "fx", "hooks"):
            raise ParameterError(f"mode must be 'auto', 'fx' or 'hooks', got {mode!r}")
        self.model = model
        self.batch_size = check_int("batch_size", batch_size, 1, hint="images per forward pass")
        self.progress = progress
        self.preset = getattr(model, "preset", None)
        check_weights(model)
        param = next(model.parameters(), None)
        self._device = param.device if param is not None else torch.device("cpu")
        # the model's own dtype: inputs are cast to it (a float64 or float16 model runs as it is)
        self._dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        if probe is None:
            size = getattr(self.preset, "size", 224)
            gen = torch.Generator().manual_seed(0)
            probe = torch.randn(2, 3, size, size, generator=gen)
        probe = probe.to(self._device, self._dtype) if probe.is_floating_point() else probe.to(self._device)
        self._probe_shape = tuple(probe.shape[1:])

        self._gm: fx.GraphModule | None = None
        sites: list[_Site] | None = None
        if mode in ("auto", "fx"):
            try:
                sites = self._trace(probe)
            except Exception as exc:  # untraceable models fall back to hooks
                if mode == "fx":
                    raise SplitError(f"torch.fx could not trace the model ({exc}); use mode='hooks'") from exc
                sites = None
        if sites is None:
            sites = self._hook_sites(probe)
            self.mode = "hooks"
        else:
            self.mode = "fx"
        self._sites = sites
        site = self._resolve(layer)
        self._site = site
        self.layer = site.name
        self.activation_shape = _channels_last_shape(site.shape)
        self._h_fx: fx.GraphModule | None = None
        self._g_fx: fx.GraphModule | None = None
        if self.mode == "fx":
            self._build_fx(site)
        self._linear: LinearHead | None | bool = False  # False = not computed yet
        if check:
            self.check(probe, atol=atol)

    # ------------------------------------------------------------------ layer discovery
    def _trace(self, probe: torch.Tensor) -> list[_Site]:
        tracer = _NamingTracer()
        graph = tracer.trace(self.model)
        gm = fx.GraphModule(self.model, graph)
        shapes: dict[fx.Node, tuple[int, ...]] = {}
        env: dict[str, Any] = {}

        # shape propagation by interpreting the graph once on one probe image
        class _Shapes(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                if isinstance(out, torch.Tensor):
                    shapes[n] = tuple(out.shape)
                return out

        with torch.no_grad():
            _Shapes(gm).run(probe[:1])
        del env
        by_node: dict[fx.Node, list[str]] = {}
        counts: dict[str, int] = {}
        for path, _node in tracer.calls:
            counts[path] = counts.get(path, 0) + 1
        seen: dict[str, int] = {}
        for path, node in tracer.calls:
            i = seen.get(path, 0)
            seen[path] = i + 1
            name = f"{path}@{i}" if counts[path] > 1 else path
            by_node.setdefault(node, []).append(name)
        sites = []
        for node in gm.graph.nodes:
            if node not in shapes or node.op in ("placeholder", "output", "get_attr"):
                continue
            names = by_node.get(node, [])
            # the outermost module (shortest dotted path) names the site; the others are aliases
            names = sorted(names, key=lambda s: (s.count("."), len(s)))
            canonical = names[0] if names else node.name
            aliases = names[1:]
            sites.append(_Site(canonical, aliases, node, None, 0, shapes[node]))
        self._gm = gm
        return sites

    def _hook_sites(self, probe: torch.Tensor) -> list[_Site]:
        calls = call_order(self.model, probe)
        return [_Site(label, [], None, mod, i, shape) for label, _, i, mod, shape in calls]

    def layers(self) -> list[str]:
        """Names of every call site, in execution order."""
        return [s.name for s in self._sites]

    def describe_layers(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, channels-last activation shape for one image)`` for every call site."""
        return [(s.name, _channels_last_shape(s.shape)) for s in self._sites]

    def _resolve(self, layer: str | nn.Module) -> _Site:
        if isinstance(layer, nn.Module):
            mod_names = [n for n, m in self.model.named_modules() if m is layer]
            if not mod_names:
                raise LayerError("the given module is not part of the model; pass one of model.modules()")
            layer = mod_names[0]
        if not isinstance(layer, str):
            raise ParameterError(f"layer must be 'auto', a name or a module, got {type(layer).__name__}")
        if layer == "auto":
            return self._auto()
        exact = [s for s in self._sites if s.name == layer or layer in s.aliases]
        if exact:
            return exact[0]
        # "name@-1" (last call) and "name@i" when the name is unique
        base, _, idx = layer.partition("@")
        calls = [s for s in self._sites if base in [n.split("@")[0] for n in [s.name, *s.aliases]]]
        multi = [s for s in calls if "@" in s.name or any("@" in a for a in s.aliases)]
        if idx and calls:
            try:
                return calls[int(idx)]
            except (ValueError, IndexError):
                pass
        if not idx and len(multi) > 1:
            opts = ", ".join(
                f"'{_call_name(s, base)}' (output {list(_channels_last_shape(s.shape))})" for s in multi
            )
            raise LayerError(
                f"module {layer!r} runs {len(multi)} times in one forward pass; "
                f"say which call you mean: {opts}"
            )
        hint = nearest(layer, self.layers(), n=6)
        raise LayerError(
            f"unknown layer {layer!r}; nearest names: {', '.join(hint) if hint else '(none)'}. "
            "See ModelSplit(model).layers() or `conceptlens layers` for the full list"
        )

    def _auto(self) -> _Site:
        spatial = [s for s in self._sites if len(s.shape) == 4 and s.shape[2] * s.shape[3] > 1]
        if not spatial:
            raise LayerError("layer='auto' found no spatial layer (4-D output with h·w > 1); name a layer")
        return spatial[-1]

    # ------------------------------------------------------------------ fx split
    def _build_fx(self, site: _Site) -> None:
        gm, cut = cast(fx.GraphModule, self._gm), cast(fx.Node, site.node)
        graph = gm.graph
        nodes = list(graph.nodes)
        pos = {n: i for i, n in enumerate(nodes)}
        # g: the graph up to the cut
        g_graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for n in nodes:
            if pos[n] > pos[cut]:
                break
            env[n] = g_graph.node_copy(n, lambda a: env[a])
        g_graph.output(env[cut])
        self._g_fx = fx.GraphModule(gm, g_graph)
        self._g_fx.graph.eliminate_dead_code()
        self._g_fx.recompile()
        # h: everything the output needs downstream of the cut
        out_node = next(n for n in nodes if n.op == "output")
        # h keeps only the output conceptlens reads (out["logits"], out[0]): other entries of a dict or tuple
        # may be computed before the cut without making the split wrong
        logits_arg = _logits_arg(out_node.args[0])
        needed: set[fx.Node] = set()
        stack: list[fx.Node] = []
        fx.node.map_arg(logits_arg, stack.append)
        while stack:
            n = stack.pop()
            if n in needed or n is cut:
                continue
            needed.add(n)
            if not _is_batch_size(n):
                stack.extend(n.all_input_nodes)
        ancestors: set[fx.Node] = set()
        stack = [cut]
        while stack:
            n = stack.pop()
            if n in ancestors:
                continue
            ancestors.add(n)
            stack.extend(n.all_input_nodes)
        h_graph = fx.Graph()
        a = h_graph.placeholder("A")
        env = {cut: a}
        for n in nodes:
            if n not in needed or n.op == "output":
                continue
            # the rest of the network may read something computed before the cut; the only thing we can
            # rebuild from A is the batch size (EfficientNet's `inputs.size(0)`)
            if _is_batch_size(n):
                env[n] = h_graph.call_method("size", (a, 0))
                continue
            if n in ancestors or n.op == "placeholder":
                parent = site.name.split("@")[0].rsplit(".", 1)[0]
                raise SplitError(
                    f"cannot cut the model at {site.name!r}: the rest of the network also reads {n.name!r}, "
                    f"computed before it (a skip connection). Choose the output of a whole block"
                    + (f", e.g. {parent!r}" if parent != site.name else "")
                )
            env[n] = h_graph.node_copy(n, lambda x: env[x])
        h_graph.output(fx.node.map_arg(logits_arg, lambda x: env[x]))
        self._h_fx = fx.GraphModule(gm, h_graph)

    # ------------------------------------------------------------------ g and h
    def _find_module_site(self) -> tuple[nn.Module, int]:
        s = self._site
        return cast(nn.Module, s.module), s.call

    @contextlib.contextmanager
    def _hook(self, fn: Callable[[Any], Any]) -> Iterator[None]:
        mod, call = self._find_module_site()
        counter = {"i": 0}

        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            i = counter["i"]
            counter["i"] += 1
            if i == call:
                return fn(out)
            return None

        handle = mod.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _g_raw(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fx":
            return cast(fx.GraphModule, self._g_fx)(x)
        captured: dict[str, torch.Tensor] = {}

        def grab(out: Any) -> Any:
            captured["A"] = out
            raise _Stop

        with self._hook(grab):
            try:
                self.model(x)
            except _Stop:
                pass
        if "A" not in captured:
            raise SplitError(f"layer {self.layer!r} did not run during the forward pass")
        return captured["A"]

    def g(
        self,
        x: torch.Tensor,
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
        grad: bool = False,
    ) -> torch.Tensor:
        """Activations at the layer, channels-last.

        Parameters
        ----------
        x
            ``[N,3,H,W]`` normalised images.
        batch_size
            Images per forward pass (default: the split's ``batch_size``).
        progress
            Show a progress bar (default: on a terminal, when there is more than one batch).
        grad
            Keep the autograd graph (one pass, no batching), e.g. for attribution maps.

        Returns
        -------
        torch.Tensor
            ``[N,h,w,C]`` (spatial layer), ``[N,C]`` or ``[N,T,C]``.
        """
        x = self._input(x)
        if grad:
            return _widen(_to_channels_last(self._g_raw(x)))
        bs = batch_size or self.batch_size
        chunks = range(0, x.shape[0], bs)
        outs = []
        with torch.no_grad():
            for i in progress_bar(chunks, desc=f"activations at {self.layer}",
                                  enable=self.progress if progress is None else progress,
                                  min_items=2):
                outs.append(_widen(_to_channels_last(self._g_raw(x[i : i + bs]))).contiguous())
        return torch.cat(outs) if outs else torch.empty(0, *self.activation_shape)

    def h(self, A: torch.Tensor) -> torch.Tensor:
        """Logits from (possibly modified) activations.

        Parameters
        ----------
        A
            Channels-last activations with the layer's shape (``[N,h,w,C]``, ``[N,C]`` or ``[N,T,C]``).

        Returns
        -------
        torch.Tensor
            ``[N, K]`` logits; differentiable with respect to ``A``.
        """
        if tuple(A.shape[1:]) != tuple(self.activation_shape):
            raise ParameterError(
                f"h expects activations of shape [N, {', '.join(map(str, self.activation_shape))}] at layer "
                f"{self.layer!r}, got {list(A.shape)}"
            )
        raw = _from_channels_last(A).to(self._dtype)
        if self.mode == "fx":
            return _widen(_first_tensor(cast(fx.GraphModule, self._h_fx)(raw)))
        zeros = torch.zeros(raw.shape[0], *self._probe_shape, device=raw.device, dtype=raw.dtype)
        with self._hook(lambda _out: raw):
            return _widen(_first_tensor(self.model(zeros)))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the model's device and in its dtype; an ImageError for integer pixels or a channel count
        that the model does not take (the probe's), saying how to convert."""
        if not isinstance(x, torch.Tensor):
            raise ImageError(f"images must be a torch.Tensor [N,3,H,W], got {type(x).__name__}; "
                             "load them with cl.data.load_images(path, preset=model.preset)")
        if not x.is_floating_point():
            raise ImageError(f"images must be normalised float tensors, got dtype {x.dtype}; load them with "
                             "cl.data.load_images(x, preset=model.preset) (it scales uint8 pixels)")
        c = self._probe_shape[0] if len(self._probe_shape) == 3 else None
        if c is not None and (x.ndim != 4 or x.shape[1] != c):
            how = ""
            if x.ndim == 4 and x.shape[-1] == c:
                how = "; they look channels-last: pass x.permute(0, 3, 1, 2)"
            elif x.ndim == 4 and x.shape[1] == 1:
                how = f"; for grey images pass x.expand(-1, {c}, -1, -1)"
            raise ImageError(f"the model takes images [N,{c},H,W], got shape {list(x.shape)}{how} "
                             "(cl.data.load_images converts both)")
        return x.to(self._device, self._dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``h(g(x))``: logits ``[N, K]``."""
        return self.h(self.g(x))

    # ------------------------------------------------------------------ checks and heads
    def check(self, x: torch.Tensor, atol: float = 1e-5) -> float:
        """Verify ``h(g(x)) == model(x)``; returns the max abs difference, raises SplitError if larger.

        The tolerance is ``atol`` times ``max(1, max|logit|)`` (float32 re-association across the cut).
        """
        with torch.no_grad():
            ref = _widen(_first_tensor(self.model(self._input(x))))
            A = self.g(x)
            got = self.h(A)
        self._act_scale = float(A.abs().max()) if A.numel() else 1.0
        if got.shape != ref.shape:
            raise SplitError(f"h(g(x)) has shape {list(got.shape)} but model(x) has {list(ref.shape)}")
        err = float((got - ref).abs().max())
        scale = max(1.0, float(ref.abs().max()))
        if not math.isfinite(err) or err > atol * scale:
            raise SplitError(
                f"cutting the model at {self.layer!r} changes its output "
                f"(max |h(g(x)) − model(x)| = {err:.3g}). "
                "The rest of the network probably reads something computed before this layer (a skip "
                "connection); choose the output of a whole block instead (e.g. 'layer4' rather than "
                "'layer4.1.conv2')"
            )
        return err

    def linear_head(self) -> LinearHead | None:
        """The exact ``(weight [K,C], bias [K])`` when ``h(A) = mean_hw(A) @ weight.T + bias``, else None.

        Checked on probes of both signs at the layer's scale (see the comment in the body).

        Detected automatically: the last ``nn.Linear`` after the layer is taken as the candidate and the
        identity is verified numerically on random activations (relative error < 1e-4).
        """
        if self._linear is not False:
            return self._linear  # type: ignore[return-value]
        self._linear = None
        cand: nn.Linear | None = None
        if self.mode == "fx":
            hfx = cast(fx.GraphModule, self._h_fx)
            for n in hfx.graph.nodes:
                if n.op == "call_module" and isinstance(hfx.get_submodule(n.target), nn.Linear):
                    cand = hfx.get_submodule(n.target)  # type: ignore[assignment]
        else:
            linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            cand = linears[-1] if linears else None
        if cand is None or cand.in_features != self.activation_shape[-1]:
            return None
        w = _widen(cand.weight.detach())
        b = _widen(cand.bias.detach()) if cand.bias is not None else torch.zeros(w.shape[0], device=w.device)
        # Probes at the layer's real scale (the largest |activation| of the construction probe), both signs:
        # a head such as fc(GAP(relu(A))) is linear on non-negative activations only, and a split before
        # that ReLU has negative ones; a probe in [0, 2] alone would take it for GAP + linear.
        gen = torch.Generator().manual_seed(1)
        s = max(getattr(self, "_act_scale", 2.0), 1e-6)
        pos = torch.rand(3, *self.activation_shape, generator=gen) * s
        signed = (torch.rand(3, *self.activation_shape, generator=gen) * 2 - 1) * s
        A = torch.cat([pos, signed]).to(w.device, w.dtype)
        with torch.no_grad():
            got = self.h(A)
            mean = A.reshape(A.shape[0], -1, A.shape[-1]).mean(1)
            exp = mean @ w.T + b
        rel = float((got - exp).abs().max() / exp.abs().max().clamp_min(1e-12))
        if rel < 1e-4:
            self._linear = LinearHead(weight=w, bias=b)
        return self._linear  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"ModelSplit({type(self.model).__name__}, layer={self.layer!r}, mode={self.mode!r}, "
                f"A=[N, {', '.join(map(str, self.activation_shape))}])")


def _widen(t: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs as float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _logits_arg(out: Any) -> Any:
    """The part of an fx output's argument that :func:`_first_tensor` reads as the logits."""
    if isinstance(out, Mapping):
        return out["logits"] if "logits" in out else _first_tensor(dict(out))  # no logits: SplitError
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], fx.Node):
        return out[0]
    return out


def _call_name(site: _Site, base: str) -> str:
    """The name of ``site`` that starts with ``base`` (its ``@i`` call name), else its canonical name."""
    for n in (site.name, *site.aliases):
        if n.split("@")[0] == base:
            return n
    return site.name


def _is_batch_size(n: fx.Node) -> bool:
    """``inputs.size(0)`` on the model's input: the batch size, which h can read from A instead."""
    return (
        n.op == "call_method"
        and n.target == "size"
        and len(n.args) == 2
        and n.args[1] == 0
        and getattr(n.args[0], "op", None) == "placeholder"
    )


def _channels_last_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    s = tuple(shape[1:])
    return (s[1], s[2], s[0]) if len(s) == 3 and len(shape) == 4 else s


def list_layers(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Every call site of ``model`` with its channels-last activation shape (one image)."""
    return ModelSplit(model, "auto", check=False).describe_layers()
