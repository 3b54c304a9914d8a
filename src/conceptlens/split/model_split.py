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
  and stops; ``h`` runs the model on a zero input with a hook that substitutes the output (correct only when
  the rest depends on nothing else, as the construction-time check verifies; one hooked pass at a time).

At construction ``h(g(x)) == model(x)`` is checked on a probe input; a mismatch is a :class:`SplitError`.

**Any input size** the model accepts: the probe only finds the call sites and checks the cut. ``g`` returns
the grid of whatever input it is given (``[N,1,2,C]`` for a ResNet's ``layer4`` at 32 × 48, ``[N,7,7,C]`` at
224), and ``h`` takes any grid with the layer's channel count (in hook mode it runs the network on a zero
input of the size that gives that grid: the size ``g`` last saw for it, else the probe's scaled).

**Layouts** (:mod:`conceptlens.split.layout`): ``[N,C,h,w]`` maps and ``[N,h,w,C]`` (Swin) become
``[N,h,w,C]``; a token layer ``[N, E + h·w, C]`` (ViT, DeiT) becomes the grid of its patch tokens
``[N,h,w,C]``, its ``E`` class / register tokens set aside. ``h`` puts them back unchanged: the images' own
(``h(A, extra=…)``, with ``extra`` from ``g(x, return_extra=True)``), else ``split.extra_tokens_``, the mean
over the probe images (:meth:`ModelSplit.set_reference` takes real images). So ``h(A)`` is a function of the
patch grid alone, which is what concept methods decompose; it equals ``model(x)`` exactly when the rest of
the network reads the extra tokens only through the patches (average-pooled heads) or when ``extra`` is
passed.

A float64 / float16 / bfloat16 model runs as it is: inputs are cast to the model's dtype; ``g`` / ``h``
return float32 for half-precision models, else the model's own dtype (a float64 model keeps its precision).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn

from conceptlens._check import check_int
from conceptlens.errors import ImageError, LayerError, ParameterError, SplitError, nearest
from conceptlens.io.models import check_weights
from conceptlens.progress import progress_bar
from conceptlens.split import _fx, auto
from conceptlens.split.layout import (
    Layout,
    channels_last_shape,
    classify,
    from_grid,
    grid_of,
    prefix_tokens,
    to_grid,
)
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
    shape: tuple[int, ...]  # raw output shape on the probe (batch 1)
    layout: Layout
    grid: tuple[int, ...]  # channels-last shape for one probe image


class _Stop(Exception):
    """Raised inside a hook to stop the forward pass once g's output is captured."""


class ModelSplit:
    """A classifier cut at ``layer`` into ``g`` and ``h``.

    Parameters
    ----------
    model
        A classifier ``model(x [N,3,H,W]) -> logits [N,K]``; put in eval mode (with a warning) if training.
    layer
        ``"auto"`` (see :mod:`conceptlens.split.auto`), a dotted module name (``"layer4"``, ``"_swish@1"``,
        ``"blocks.10"``), an fx node name, or the module object itself.
    probe
        An input ``[n,3,H,W]`` used to find shapes and check the split (default: seeded noise of the
        model's preset size); for a token layer also the images whose mean class tokens ``h`` uses.
    batch_size
        Images per forward pass in :meth:`g` (memory bound).
    check
        Verify ``h(g(probe)) == model(probe)`` within ``atol`` (absolute, scaled by the logits' range).
    mode
        ``"auto"`` (fx when it traces, else hooks), ``"fx"`` or ``"hooks"``.
    progress
        Default for progress bars in :meth:`g` (None: only on a terminal).
    signed
        ``"keep"``: activations as the model computes them. ``"split"``: ``A⁺ = [max(A, 0), max(−A, 0)]``
        (``2C`` channels, ≥ 0) and ``h(A⁺) = h(A⁺[..., :C] − A⁺[..., C:])``, an exact split of a signed layer
        (a transformer's tokens, a layer before its ReLU) that NMF-like methods (ICE, CRAFT, FACE) can fit.

    Attributes
    ----------
    layer : str
        The canonical name of the chosen call site.
    mode : str
        ``"fx"`` or ``"hooks"``.
    activation_shape : tuple
        Shape of ``A`` for one probe image (channels-last, without the batch dimension); other input sizes
        give other ``h, w``.
    layout : Layout
        How the site lays out its output (``nchw``, ``nhwc``, ``tokens``, ``flat``, ``other``).
    extra_tokens_ : torch.Tensor or None
        Token layers with class / register tokens: ``[E, C]``, the tokens ``h`` puts back by default.
    auto_note : str or None
        With ``layer="auto"``: which site was chosen, and why.
    device : torch.device
        The model's device (inputs are moved there).
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
        signed: str = "keep",
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
        if signed not in ("keep", "split"):
            raise ParameterError(f"signed must be 'keep' or 'split', got {signed!r}")
        self.signed = signed
        self.model = model
        self.batch_size = check_int("batch_size", batch_size, 1, hint="images per forward pass")
        self.progress = progress
        self.preset = getattr(model, "preset", None)
        check_weights(model)
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        # the model's own dtype: inputs are cast to it (a float64 or float16 model runs as it is)
        self._dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        if probe is None:
            size = getattr(self.preset, "size", 224)
            gen = torch.Generator().manual_seed(0)
            probe = torch.randn(2, 3, size, size, generator=gen)
        probe = probe.to(self.device, self._dtype) if probe.is_floating_point() else probe.to(self.device)
        self._probe = probe
        self._probe_shape = tuple(probe.shape[1:])
        self._input_for: dict[tuple[int, ...], tuple[int, int]] = {}  # grid (h, w) → input (H, W), hook mode
        self.extra_tokens_: torch.Tensor | None = None
        self.auto_note: str | None = None

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
        self._h_fx: fx.GraphModule | None = None
        self._g_fx: fx.GraphModule | None = None
        self._cut: _Site | None = None
        if isinstance(layer, str) and layer == "auto":
            site, self.auto_note = auto.choose(sites, model, self._try)
        else:
            site = self._resolve(layer)
        if self._cut is not site:  # auto's last try already cut there
            self._select(site)
        self._linear: LinearHead | None | bool = False  # False = not computed yet
        self._pools: bool | None = None
        if check:
            self.check(probe, atol=atol)

    # ------------------------------------------------------------------ layer discovery
    def _hw(self) -> tuple[int, int]:
        shape = self._probe_shape
        return (int(shape[-2]), int(shape[-1])) if len(shape) == 3 else (1, 1)

    def _site(self, name: str, aliases: list[str], node: fx.Node | None, mod: nn.Module | None, call: int,
              shape: tuple[int, ...], n_extra: int | None) -> _Site:
        layout = classify(shape, self._hw(), n_extra) if len(self._probe_shape) == 3 else Layout("other")
        grid = channels_last_shape(shape, layout, self._hw())
        return _Site(name, aliases, node, mod, call, shape, layout, grid)

    def _trace(self, probe: torch.Tensor) -> list[_Site]:
        self._gm, found = _fx.trace_sites(self.model, probe)
        n_extra = prefix_tokens(self.model)
        return [self._site(name, aliases, node, None, 0, shape, n_extra)
                for name, aliases, node, shape in found]

    def _hook_sites(self, probe: torch.Tensor) -> list[_Site]:
        n_extra = prefix_tokens(self.model)
        return [self._site(label, [], None, mod, i, shape, n_extra)
                for label, _, i, mod, shape in call_order(self.model, probe)]

    def _select(self, site: _Site) -> None:
        """Cut at ``site``: build fx's g / h and the default extra tokens (SplitError when it cannot; a
        LayerError for ``[N,T,C]`` tokens that are no patch grid)."""
        if len(site.shape) == 3 and site.layout.kind == "other":
            grid_of(Layout("tokens", prefix_tokens(self.model) or 0), site.shape[1], self._hw(), site.name)
        self._cut = site
        self.layer = site.name
        self.layout = site.layout
        self.activation_shape = site.grid
        if self.signed == "split":
            self.activation_shape = (*site.grid[:-1], 2 * site.grid[-1])
        self.extra_tokens_ = None
        if self.mode == "fx":
            gm, node = cast(fx.GraphModule, self._gm), cast(fx.Node, site.node)
            self._g_fx, self._h_fx = _fx.cut(gm, node, site.name)
        if site.layout.kind == "tokens" and site.layout.n_extra:
            self.set_reference(self._probe)

    def _try(self, site: _Site) -> bool:
        self._select(site)
        return auto.reaches_logits(self.h, self.g(self._probe, progress=False))

    def set_reference(self, x: torch.Tensor) -> ModelSplit:
        """Token layers: let ``h`` put back the mean class / register tokens of images ``x [N,3,H,W]``
        (``extra_tokens_ [E, C]``); a no-op for other layers. Returns self."""
        if self.layout.kind == "tokens" and self.layout.n_extra:
            _, extra = self.g(x, return_extra=True, progress=False)
            self.extra_tokens_ = extra.mean(0).detach()
        return self

    def layers(self) -> list[str]:
        """Names of every call site, in execution order."""
        return [s.name for s in self._sites]

    def describe_layers(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, channels-last activation shape for one probe image)`` for every call site."""
        return [(s.name, s.grid) for s in self._sites]

    def _resolve(self, layer: str | nn.Module) -> _Site:
        if isinstance(layer, nn.Module):
            mod_names = [n for n, m in self.model.named_modules() if m is layer]
            if not mod_names:
                raise LayerError("the given module is not part of the model; pass one of model.modules()")
            layer = mod_names[0]
        if not isinstance(layer, str):
            raise ParameterError(f"layer must be 'auto', a name or a module, got {type(layer).__name__}")
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
            opts = ", ".join(f"'{_call_name(s, base)}' (output {list(s.grid)})" for s in multi)
            raise LayerError(
                f"module {layer!r} runs {len(multi)} times in one forward pass; "
                f"say which call you mean: {opts}"
            )
        hint = nearest(layer, self.layers(), n=6)
        raise LayerError(
            f"unknown layer {layer!r}; nearest names: {', '.join(hint) if hint else '(none)'}. "
            "See ModelSplit(model).layers() or `conceptlens layers` for the full list"
        )

    # ------------------------------------------------------------------ g and h
    @contextlib.contextmanager
    def _hook(self, fn: Callable[[Any], Any]) -> Iterator[None]:
        cut = cast(_Site, self._cut)
        mod, call = cast(nn.Module, cut.module), cut.call
        counter = {"i": 0}

        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            i = counter["i"]
            counter["i"] += 1
            if i == call:
                return fn(out)
            return None

        with _HOOKED:  # a concurrent hooked pass would run this hook too (and this pass its)
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

    def _g_one(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        A, extra = to_grid(self._g_raw(x), self.layout, hw, self.layer)
        if self.layout.spatial:
            self._input_for[tuple(A.shape[1:3])] = hw
        if self.signed == "split":
            A = torch.cat([A.clamp_min(0), (-A).clamp_min(0)], dim=-1)
        return _widen(A), None if extra is None else _widen(extra)

    def g(
        self,
        x: torch.Tensor,
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
        grad: bool = False,
        return_extra: bool = False,
    ) -> Any:
        """Activations at the layer, channels-last.

        Parameters
        ----------
        x
            ``[N,3,H,W]`` normalised images, of any size the model accepts.
        batch_size
            Images per forward pass (default: the split's ``batch_size``).
        progress
            Show a progress bar (default: on a terminal, when there is more than one batch).
        grad
            Keep the autograd graph (one pass, no batching), e.g. for attribution maps.
        return_extra
            Also return a token layer's class / register tokens ``[N,E,C]`` (None for other layers).

        Returns
        -------
        torch.Tensor
            ``[N,h,w,C]`` (spatial or token layer: the patch grid), ``[N,C]`` (flat); with ``return_extra``
            the pair ``(A, extra)``.
        """
        x = self._input(x)
        if grad:
            A, extra = self._g_one(x)
        else:
            bs = batch_size or self.batch_size
            chunks = range(0, x.shape[0], bs)
            parts = []
            with torch.no_grad():
                for i in progress_bar(chunks, desc=f"activations at {self.layer}",
                                      enable=self.progress if progress is None else progress, min_items=2):
                    a, e = self._g_one(x[i: i + bs])
                    parts.append((a.contiguous(), e))
            A = torch.cat([a for a, _ in parts]) if parts else torch.empty(0, *self.activation_shape)
            extra = torch.cat([e for _, e in parts]) if parts and parts[0][1] is not None else None
        return (A, extra) if return_extra else A

    def h(self, A: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from (possibly modified) activations.

        Parameters
        ----------
        A
            Channels-last activations: ``[N,h,w,C]`` with the layer's ``C`` and any ``h, w`` an input size
            gives (spatial and token layers), else the layer's exact shape (``[N,C]``).
        extra
            Token layers: the class / register tokens to put back, ``[N,E,C]`` (each image's own, from
            ``g(x, return_extra=True)``) or ``[E,C]``; default ``extra_tokens_``.

        Returns
        -------
        torch.Tensor
            ``[N, K]`` logits; differentiable with respect to ``A``.
        """
        shape = tuple(self.activation_shape)
        grid = self.layout.spatial and len(shape) == 3
        ok = A.ndim == len(shape) + 1 and (A.shape[-1] == shape[-1] and all(A.shape[1:-1]) if grid
                                           else tuple(A.shape[1:]) == shape)
        if not ok:
            what = (f"[N, h, w, {shape[-1]}] (e.g. [N, {', '.join(map(str, shape))}] for the probe's input "
                    "size)" if grid else f"[N, {', '.join(map(str, shape))}]")
            raise ParameterError(f"h expects activations of shape {what} at layer {self.layer!r}, "
                                 f"got {list(A.shape)}")
        if self.signed == "split":
            A = A[..., : shape[-1] // 2] - A[..., shape[-1] // 2:]
        # a verified GAP + linear head (always checked first, so h never depends on the call order): its
        # closed form, without rebuilding the feature map and running the network's head
        lin = self.linear_head() if grid and self.layout.kind != "tokens" else None
        if lin is not None:
            a = A.to(self._dtype)
            return _widen(a.mean((1, 2)).to(lin.weight.dtype) @ lin.weight.T + lin.bias)
        raw = from_grid(A, self.layout, self.extra_tokens_ if extra is None else extra).to(self._dtype)
        if self.mode == "fx":
            return _widen(_first_tensor(cast(fx.GraphModule, self._h_fx)(raw)))
        size = self._input_size(tuple(A.shape[1:3])) if grid else self._probe_shape[1:]
        zeros = torch.zeros(raw.shape[0], self._probe_shape[0], *size, device=raw.device, dtype=raw.dtype)
        with self._hook(lambda _out: raw):
            return _widen(_first_tensor(self.model(zeros)))

    def _input_size(self, hw: tuple[int, ...]) -> tuple[int, int]:
        """Hook mode: an input size whose forward pass reaches the layer with an ``h × w`` grid (the size
        ``g`` last saw giving it, else the probe's scaled by the grid's ratio)."""
        if hw in self._input_for:
            return self._input_for[hw]
        H, W = self._hw()
        ph, pw = self.activation_shape[0], self.activation_shape[1]
        return (max(1, round(hw[0] * H / ph)), max(1, round(hw[1] * W / pw)))

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
        return x.to(self.device, self._dtype)

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
            A, extra = self.g(x, return_extra=True)
            got = self.h(A, extra)
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

    def pools_first(self) -> bool:
        """Whether ``h`` reads a spatial layer only through its mean over positions: ``h(A) = g(mean_hw A)``.

        True for a verified GAP + linear head; else ``h`` of random activations (both signs, the layer's
        scale) must equal ``h`` of their mean at every position (relative error < 1e-5). False for token
        and flat layers. (CRAFT's sampled Sobol then pools the codes first: ``concept_total_indices(...,
        pooled=True)``.)
        """
        shape = tuple(self.activation_shape)
        grid = self.layout.spatial and len(shape) == 3 and self.layout.kind != "tokens"
        if self._pools is None and not grid:
            self._pools = False
        if self._pools is None and self.linear_head() is None:
            gen = torch.Generator().manual_seed(2)
            s = max(getattr(self, "_act_scale", 2.0), 1e-6)
            A = torch.cat([torch.rand(2, *shape, generator=gen) * s,
                           (torch.rand(2, *shape, generator=gen) * 2 - 1) * s]).to(self.device, self._dtype)
            with torch.no_grad():
                got, exp = self.h(A), self.h(A.mean((1, 2), keepdim=True).expand_as(A).contiguous())
            self._pools = float((got - exp).abs().max() / exp.abs().max().clamp_min(1e-12)) < 1e-5
        return True if self._pools is None else self._pools

    def __repr__(self) -> str:
        return (f"ModelSplit({type(self.model).__name__}, layer={self.layer!r}, mode={self.mode!r}, "
                f"A=[N, {', '.join(map(str, self.activation_shape))}])")


_HOOKED = threading.RLock()  # held by hook-mode passes (g and h), which add a hook to a shared module


def _widen(t: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs as float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _call_name(site: _Site, base: str) -> str:
    """The name of ``site`` that starts with ``base`` (its ``@i`` call name), else its canonical name."""
    for n in (site.name, *site.aliases):
        if n.split("@")[0] == base:
            return n
    return site.name


def list_layers(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Every call site of ``model`` with its channels-last activation shape (one image)."""
    return ModelSplit(model, "auto", check=False).describe_layers()
