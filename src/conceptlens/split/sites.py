"""Call sites: where in a forward pass an output can be read, named once for the whole library.

Notation
--------
x
    ``[N,3,H,W]`` images, normalised for the classifier ``f`` (logits ``[N,K]``).
call site
    One call of a named module during one forward pass. A module can run several times (EfficientNet-Lite0's
    ``_swish`` runs after the stem and again after the head conv; torchvision's BasicBlock runs its ``relu``
    twice), so a site is named by the module's dotted name, with ``@i`` (0-based call index) when the module
    runs more than once. :class:`~conceptlens.split.model_split.ModelSplit` and the minimal masks'
    activation matching both name layers through :func:`call_order`.
φ_ℓ
    the output of call site ``ℓ``, channels-first as the model computes it (``[N,C,h,w]`` spatial,
    ``[N,C]`` flat).
α_ℓ
    the weight of site ``ℓ`` in an activation-matching loss; the weights sum to 1.

Hooks are context managers (:func:`forward_hooks`, :func:`capture`): handles are removed in ``finally``,
so an exception inside the forward pass never leaves a hook on the user's model.

The model-call conventions shared by the attribution methods and the pixel metrics live here too, the
lowest layer both use: the logits of a model's output (:func:`logits_of`), batched forward passes without
gradient (:func:`forward_chunks`), the image check (:func:`check_images`) and the target rules
(:func:`resolve_targets`: None = the model's top-1, a class index or name for every image, or one per image).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from conceptlens.errors import ImageError, LayerError, ParameterError, SplitError, TargetError, nearest
from conceptlens.split.auto import block_names
from conceptlens.split.layout import classify, prefix_tokens

__all__ = ["CallSite", "call_order", "activation_sites", "default_layers", "resolve_layers", "find_site",
           "forward_hooks", "capture", "logits_of", "forward_chunks", "check_images", "check_target_length",
           "slice_target", "resolve_target", "resolve_targets"]

#: The authors' ResNet-18 layer weights (relu, layer1, layer2, layer3, layer4), aligned at the deepest layer.
_AUTHOR_ALPHAS = (1.0, 2.0, 2.0, 4.0, 8.0)

_ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Sigmoid, nn.Tanh,
)
_ACTIVATION_WORDS = ("relu", "swish", "silu", "gelu", "mish", "sigmoid", "activation", "act")

Hook = Callable[[nn.Module, Any, Any], None]


# --------------------------------------------------------------------------------------------- hooks
@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks for the duration of the block; removed in ``finally``."""
    handles = []
    try:
        for mod, hook in hooks:
            handles.append(mod.register_forward_hook(hook))
        yield
    finally:
        for hd in handles:
            hd.remove()


def _first_tensor(out: Any, error: type[Exception] = SplitError) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, the first of a tuple/list, or ``out["logits"]``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, Mapping):
        raise error(
            f"the model returned a dict without a 'logits' entry (keys: {', '.join(map(repr, out))}); "
            "wrap it so that it returns the logits tensor [N, K], e.g. a module whose forward is "
            "`return model(x)[key]` with the key you mean"
        )
    raise error(f"the model returned {type(out).__name__}; conceptlens needs a logits tensor [N, K]")


def logits_of(out: Any) -> torch.Tensor:
    """``[N,K]`` logits of a model's output: a tensor, a tuple / list led by one, or ``out["logits"]``.

    Raises
    ------
    ParameterError
        When the output holds no logits tensor.
    """
    return _first_tensor(out, ParameterError)


def call_order(
    model: nn.Module, probe: torch.Tensor
) -> list[tuple[str, str, int, nn.Module, tuple[int, ...]]]:
    """Every call of a named module of ``model`` on ``probe[:1]``, in execution order.

    Returns ``(label, name, call, module, shape)`` per call: ``name`` is the module's dotted name, ``call``
    the 0-based index of this call of that module, ``label`` the name with ``@call`` when the module runs
    more than once in one forward pass, ``shape`` the output's shape (batch of 1 included). Calls whose
    output is not a tensor are skipped. The naming shared by
    :class:`~conceptlens.split.model_split.ModelSplit` and :func:`activation_sites`.
    """
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def make(name: str, mod: nn.Module) -> Hook:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                order.append((name, mod, tuple(out.shape)))

        return hook

    hooks = [(mod, make(name, mod)) for name, mod in model.named_modules() if name]
    with forward_hooks(hooks), torch.no_grad():
        model(probe[:1])
    counts: dict[str, int] = {}
    for name, _, _ in order:
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    calls = []
    for name, mod, shape in order:
        i = seen.get(name, 0)
        seen[name] = i + 1
        calls.append((f"{name}@{i}" if counts[name] > 1 else name, name, i, mod, shape))
    return calls


# --------------------------------------------------------------------------------------------- call sites
@dataclass(frozen=True)
class CallSite:
    """One call of a module in a forward pass.

    Attributes
    ----------
    name : str
        ``"module"``, or ``"module@i"`` when the module runs more than once.
    module : str
        The module's dotted name.
    call : int
        0-based index of this call of the module.
    shape : tuple of int
        Output shape for one image, channels-first as the model computes it (``(C, h, w)`` or ``(C,)``).
    activation : bool
        True for an activation module (ReLU, ReLU6, SiLU, GELU, … or a leaf named like one).
    block : bool
        True for a whole block (a child of a top-level ``Sequential`` / ``ModuleList``: ``blocks.3``).
    tokens : bool
        True for a token output ``(E + h·w, C)`` (see :mod:`conceptlens.split.layout`).
    """

    name: str
    module: str
    call: int
    shape: tuple[int, ...]
    activation: bool
    block: bool = False
    tokens: bool = False


def _is_activation(mod: nn.Module, name: str) -> bool:
    if isinstance(mod, _ACTIVATION_TYPES):
        return True
    if list(mod.children()):
        return False
    low = (type(mod).__name__ + " " + name.rsplit(".", 1)[-1]).lower()
    return any(w in low for w in _ACTIVATION_WORDS)


def activation_sites(model: nn.Module, probe: torch.Tensor) -> list[CallSite]:
    """Every module call site of ``model`` on ``probe``, in execution order.

    Names follow :class:`conceptlens.ModelSplit`: the module's dotted name, with ``@i`` (0-based) when the
    module runs more than once in one forward pass.

    Parameters
    ----------
    model
        The classifier.
    probe
        ``[n,3,H,W]`` an input of the size that will be explained (only its first image is used).

    Returns
    -------
    list of CallSite
        Call sites with ``name``, ``module``, ``call``, ``shape`` (one image, channels-first) and
        ``activation`` (True for activation modules: ReLU, ReLU6, SiLU, GELU, ... or a leaf module whose
        class or attribute name says so, e.g. EfficientNet's ``_swish``).
    """
    blocks, n_extra = block_names(model), prefix_tokens(model)
    hw = (int(probe.shape[-2]), int(probe.shape[-1]))
    return [CallSite(label, name, i, shape[1:], _is_activation(mod, name), name in blocks,
                     classify(shape, hw, n_extra).kind == "tokens")
            for label, name, i, mod, shape in call_order(model, probe)]


def default_layers(sites: Sequence[CallSite]) -> dict[str, float]:
    """The automatic layers of activation matching and their weights ``α_ℓ`` (summing to 1).

    For every spatial resolution (``h·w > 1``) in order of appearance, the last activation call site with
    that resolution (the post-activation output of each stage: ``relu``, ``layer1``…``layer4`` on a ResNet,
    the ReLU6 ``_swish`` sites on EfficientNet-Lite0). Without activation modules, the last call site of
    each resolution. A transformer (token blocks, no spatial activation): the output of the last block of
    each quarter of its depth (``blocks.2``, ``blocks.5``, ``blocks.8``, ``blocks.11`` on a ViT-Tiny).
    Weights: the authors' 1, 2, 2, 4, 8 aligned at the deepest layer (1 for any earlier).

    Parameters
    ----------
    sites
        :func:`activation_sites` of the model.

    Returns
    -------
    dict
        ``{site name: α}`` in execution order.
    """
    spatial = [s for s in sites if len(s.shape) == 3 and s.shape[1] * s.shape[2] > 1]
    acts = [s for s in spatial if s.activation]
    token_blocks = [s for s in sites if s.tokens and s.block]
    if token_blocks and not acts:  # a transformer: the outputs of the last block of each quarter of its depth
        n = len(token_blocks)
        chosen = [token_blocks[i] for i in sorted({max(0, round(n * q / 4) - 1) for q in (1, 2, 3, 4)})]
        alphas = list(_AUTHOR_ALPHAS[-len(chosen):])
        return {s.name: a / sum(alphas) for s, a in zip(chosen, alphas, strict=True)}
    acts = acts or spatial
    if not acts:
        raise LayerError(
            "found no spatial layer (4-D output with h·w > 1) to match activations at; pass layers="
        )
    last: dict[tuple[int, int], CallSite] = {}
    for s in acts:
        last.pop((s.shape[1], s.shape[2]), None)  # re-insert so that dict order = order of the last call
        last[(s.shape[1], s.shape[2])] = s
    chosen = sorted(last.values(), key=lambda s: acts.index(s))
    alphas = list(_AUTHOR_ALPHAS[-len(chosen):])
    alphas = [1.0] * (len(chosen) - len(alphas)) + alphas
    total = sum(alphas)
    return {s.name: a / total for s, a in zip(chosen, alphas, strict=True)}


def resolve_layers(
    layers: str | Sequence[str] | Mapping[str, float] | None, sites: Sequence[CallSite]
) -> dict[str, float]:
    """``{site name: α}`` (normalised to sum 1) from a user's choice of layers.

    Parameters
    ----------
    layers
        None (:func:`default_layers`), one name, a list of names (equal weights) or a ``{name: weight}``
        dict; an empty list gives ``{}``.
    sites
        :func:`activation_sites` of the model.

    Raises
    ------
    LayerError
        An unknown name (with the nearest site names), or a module that runs several times named without
        its call index.
    """
    if layers is None:
        return default_layers(sites)
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(layers, Mapping):
        items = list(layers.items())
    else:
        items = [(name, 1.0) for name in layers]
    if not items:
        return {}
    names = [s.name for s in sites]
    out: dict[str, float] = {}
    for name, w in items:
        if not isinstance(name, str):
            raise ParameterError(f"layer names must be strings, got {type(name).__name__}")
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ParameterError(f"layer weight of {name!r} must be a finite number ≥ 0, got {w!r}")
        site = find_site(name, sites)
        if site is None:
            hint = nearest(name, names, n=6)
            raise LayerError(
                f"unknown layer {name!r} for activation matching; nearest call sites: "
                f"{', '.join(hint) if hint else '(none)'}. Only module outputs can be matched (see "
                "conceptlens.split.sites.activation_sites(model, x))"
            )
        out[site.name] = out.get(site.name, 0.0) + float(w)
    total = sum(out.values())
    if total <= 0:
        raise ParameterError("the layer weights sum to 0; give at least one positive weight")
    return {k: v / total for k, v in out.items()}


def find_site(name: str, sites: Sequence[CallSite]) -> CallSite | None:
    """The site called ``name`` (``"module"`` or ``"module@i"``), or None when there is none.

    Raises
    ------
    LayerError
        When ``name`` is a module that runs several times (the call index is then required).
    """
    for s in sites:
        if s.name == name:
            return s
    base, _, idx = name.partition("@")
    calls = [s for s in sites if s.module == base]
    if calls and idx:
        try:
            return calls[int(idx)]
        except (ValueError, IndexError):
            return None
    if len(calls) > 1:
        opts = ", ".join(f"'{s.name}'" for s in calls)
        raise LayerError(
            f"module {name!r} runs {len(calls)} times in one forward pass; say which call: {opts}"
        )
    return None


@contextlib.contextmanager
def capture(model: nn.Module, sites: Sequence[CallSite]) -> Iterator[dict[str, torch.Tensor]]:
    """Keep the outputs ``φ_ℓ`` of the chosen call sites during the forward passes run inside the block.

    Yields a dict ``{site name: tensor}`` filled by the hooks (not detached: the outputs keep their graph);
    the hooks are removed when the block ends, also on an exception.
    """
    mods = dict(model.named_modules())
    wanted: dict[str, dict[int, str]] = {}
    for s in sites:
        wanted.setdefault(s.module, {})[s.call] = s.name
    counters = {k: 0 for k in wanted}
    out: dict[str, torch.Tensor] = {}

    def make(module_name: str) -> Hook:
        def hook(_m: nn.Module, _i: Any, value: Any) -> None:
            i = counters[module_name]
            counters[module_name] += 1
            label = wanted[module_name].get(i)
            if label is not None and isinstance(value, torch.Tensor):
                out[label] = value

        return hook

    with forward_hooks((mods[name], make(name)) for name in wanted):
        yield out


# --------------------------------------------------------------------------------------------- model calls
def forward_chunks(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[N,K]`` logits of ``x [N,3,H,W]`` in chunks of ``batch_size`` images, without gradient."""
    with torch.no_grad():
        return torch.cat([logits_of(model(x[i: i + batch_size])) for i in range(0, x.shape[0], batch_size)])


def check_images(x: Any) -> torch.Tensor:
    """``x`` when it is a finite floating-point ``[N,3,H,W]`` tensor with ``N ≥ 1``; else an ImageError."""
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"images must be a torch.Tensor [N,3,H,W], got {type(x).__name__}; "
                         "load them with conceptlens.io.images.load_images")
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise ImageError(f"images must have shape [N,3,H,W] with N ≥ 1, got {list(x.shape)}")
    if not x.is_floating_point():
        raise ImageError(f"images must be floating point (normalised), got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ImageError("images contain NaN or Inf")
    return x


def check_target_length(target: Any, n: int) -> None:
    """Raise a TargetError when ``target`` is a sequence whose length is not ``n`` (the number of images)."""
    if target is None or isinstance(target, (int, str)):
        return
    if isinstance(target, torch.Tensor) and target.ndim == 0:
        return
    try:
        k = len(target)
    except TypeError:
        return  # an unsupported type: resolve_targets names it
    if k != n:
        raise TargetError(f"got {k} targets for {n} images; give one per image or a single class")


def slice_target(target: Any, offset: int, n: int) -> Any:
    """The targets of images ``offset … offset + n − 1`` (a single class stays as it is)."""
    if target is None or isinstance(target, (int, str)):
        return target
    if isinstance(target, torch.Tensor) and target.ndim == 0:
        return target
    return target[offset: offset + n]


def resolve_target(target: int | str, classes: list[str], n_outputs: int) -> int:
    """Class index from an index (an int, a digit string or a 0-d tensor) or a class name
    (case-insensitive); TargetError, with the nearest names, otherwise."""
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = int(target.item())
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index or name, got {target!r}")
    if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
        t = int(target)
        if not 0 <= t < n_outputs:
            raise TargetError(f"target class {t} is out of range: the model has {n_outputs} classes "
                              f"(0–{n_outputs - 1})")
        return t
    if isinstance(target, str):
        low = [c.lower() for c in classes]
        if target.lower() in low:
            return low.index(target.lower())
        hint = nearest(target.lower(), low)
        raise TargetError(
            f"unknown class name {target!r}"
            + (f"; did you mean {', '.join(repr(classes[low.index(h)]) for h in hint)}?" if hint else "")
            + " (or pass the class index)"
        )
    raise TargetError(f"target must be a class index or name, got {type(target).__name__}")


def resolve_targets(model: nn.Module, target: Any, logits: torch.Tensor) -> torch.Tensor:
    """``[N]`` long class indices from None (top-1 of ``logits [N,K]``), one index / name, or one per image.

    Class names are looked up (case-insensitively) in ``model.preset.classes``.

    Raises
    ------
    TargetError
        An index out of range, an unknown name (with the nearest names) or a wrong number of targets.
    """
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    classes = list(getattr(getattr(model, "preset", None), "classes", []) or [])

    def one(t: Any) -> int:
        return resolve_target(t, classes, k)

    if isinstance(target, (int, str)) or (isinstance(target, torch.Tensor) and target.ndim == 0):
        return torch.full((n,), one(target), dtype=torch.long, device=logits.device)
    items = target.tolist() if isinstance(target, torch.Tensor) else list(target)
    if len(items) != n:
        raise TargetError(f"got {len(items)} targets for {n} images; give one per image or a single class")
    return torch.tensor([one(t) for t in items], dtype=torch.long, device=logits.device)
