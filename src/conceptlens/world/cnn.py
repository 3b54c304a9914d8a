"""The small CNN trained on the concept world, and its on-disk cache.

:func:`trained_model` returns a :class:`ConceptCNN` (five conv + BN + ReLU blocks, global average
pooling, one linear layer) trained on fresh samples of a :class:`~conceptlens.world.concepts.ConceptWorld`.
Its classes can only be told apart by finding both key concepts, so a faithful explanation of class ``c``
must point at the two concepts of ``world.relevance[c]``: this is the model the ground-truth leaderboard
and the slow tests explain.

Training takes minutes on a CPU, so the weights are cached: one safetensors file per configuration
(architecture, world parameters, seed, training parameters; the file name holds a hash of them), written
through :func:`conceptlens._io.atomic_write` (fsync, mode ``0644``, rename) so that a reader never sees a
torn file and other users of a shared cache can read it. Loading reads tensors only (no pickle, no code).

Notation: ``x [N, 3, S, S]`` images as :meth:`ConceptWorld.sample` returns them, logits ``[N, n_classes]``,
the last spatial activation ``[N, C, h, w]`` with ``C = ARCH["widths"][-1]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conceptlens._check import check_int
from conceptlens._io import atomic_write
from conceptlens.errors import ParameterError
from conceptlens.progress import enabled as _progress_enabled
from conceptlens.world.concepts import ConceptWorld

__all__ = ["ConceptCNN", "trained_model", "default_cache_dir", "ARCH", "TRAINING"]

#: Architecture of :class:`ConceptCNN`: one conv(3x3) + BN + ReLU block per (width, stride).
ARCH: dict[str, Any] = {
    "name": "ConceptCNN",
    "version": 1,
    "widths": [32, 48, 64, 64, 64],
    "strides": [2, 2, 1, 2, 1],
}
#: How :func:`trained_model` trains: AdamW with a one-cycle schedule on fresh samples at every step.
TRAINING: dict[str, Any] = {
    "steps": 800,
    "batch_size": 64,
    "lr": 1e-2,
    "weight_decay": 1e-4,
    "pct_start": 0.2,
    "eval_size": 2000,
    "threads": 2,
}
_FORMAT = 1  # bump when the cache file layout changes


class ConceptCNN(nn.Module):
    """A small CNN for the concept world: conv blocks, global average pooling, one linear layer.

    ``features`` is an ``nn.Sequential`` of Conv2d(3x3, no bias) + BatchNorm2d + ReLU triples; its
    last module is a ReLU whose output ``[N, C, h, w]`` (``C = widths[-1]``, ``h = w = S / prod(strides)``,
    8 x 8 with 64 channels for S = 64 and the default :data:`ARCH`) is the last spatial layer before
    ``pool`` (global average) and ``fc`` (linear), so ``ModelSplit(layer="auto")`` cuts there.

    Parameters
    ----------
    n_classes : int
        Number of outputs.
    widths, strides : sequence of int
        Output channels and stride of each conv block.

    Notes
    -----
    ``forward`` maps ``x [N, 3, S, S]`` (normalised as :meth:`ConceptWorld.sample` returns it) to
    logits ``[N, n_classes]``.
    """

    def __init__(
        self, n_classes: int, widths: Sequence[int] = ARCH["widths"], strides: Sequence[int] = ARCH["strides"]
    ) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ParameterError(
                f"widths and strides must have the same non-zero length, got {widths} and {strides}"
            )
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, s in zip(widths, strides, strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),  # not inplace: hooks on this module must see its output intact
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, n_classes]`` of images ``x [N, 3, S, S]``."""
        return self.fc(self.flatten(self.pool(self.features(x))))


def default_cache_dir() -> Path:
    """Where trained models are cached: ``$CONCEPTLENS_CACHE``, else ``$XDG_CACHE_HOME/conceptlens``,
    else ``~/.cache/conceptlens``."""
    env = os.environ.get("CONCEPTLENS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "conceptlens"


def _model_config(world: ConceptWorld, seed: int) -> dict[str, Any]:
    """Everything that determines the trained weights (the world's own seed does not)."""
    wc = {k: v for k, v in world.config.items() if k != "seed"}
    return {"format": _FORMAT, "arch": ARCH, "world": wc, "seed": seed, "training": TRAINING}


def _config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _train(
    world: ConceptWorld, seed: int, progress: bool
) -> tuple[ConceptCNN, dict[str, float]]:
    """Train a fresh :class:`ConceptCNN` on ``world``; returns it (eval mode) and training facts."""
    t0 = time.perf_counter()
    # the thread count changes the order of floating-point reductions, hence the weights: pin it so
    # that one configuration (and its cache key) means one set of weights on every machine
    threads = torch.get_num_threads()
    torch.set_num_threads(int(TRAINING["threads"]))
    try:
        model = _fit(world, seed, progress)
        held_out = torch.Generator().manual_seed(seed + 1_000_003)  # a stream never used for training
        x, y, _, _ = world._draw(int(TRAINING["eval_size"]), held_out, with_masks=False)
        with torch.no_grad():
            acc = float(torch.cat([model(xb).argmax(1) for xb in x.split(500)]).eq(y).float().mean())
    finally:
        torch.set_num_threads(threads)
    return model, {"heldout_accuracy": acc, "train_seconds": time.perf_counter() - t0}


def _fit(world: ConceptWorld, seed: int, progress: bool) -> ConceptCNN:
    """The training loop: AdamW + one-cycle schedule, a fresh batch of the world at every step."""
    from tqdm.auto import tqdm

    # the global RNG only seeds the initial weights; fork it so the caller's RNG state is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConceptCNN(world.n_classes)
    gen = torch.Generator().manual_seed(seed)
    steps, bs = int(TRAINING["steps"]), int(TRAINING["batch_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=TRAINING["lr"], weight_decay=TRAINING["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=TRAINING["lr"], total_steps=steps, pct_start=TRAINING["pct_start"]
    )
    # channels-last convolutions are about 20 % faster on CPU; the weights are saved contiguous
    model.to(memory_format=torch.channels_last).train()
    bar = tqdm(range(steps), desc="training the concept-world CNN (once, then cached)", disable=not progress)
    for _ in bar:
        x, y, _, _ = world._draw(bs, gen, with_masks=False)
        loss = nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.to(memory_format=torch.contiguous_format).eval()


def _save_atomic(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write ``model``'s weights (contiguous) and ``metadata`` to ``path`` as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, save(state, metadata=metadata))


def _load(path: Path, config: dict[str, Any], n_classes: int) -> tuple[ConceptCNN, dict[str, float]]:
    """Load a cached model; raises ValueError/OSError when the file is unusable."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if json.loads(meta.get("config", "null")) != json.loads(json.dumps(config)):
        raise ValueError("the cached file was trained with another configuration")
    model = ConceptCNN(n_classes)
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()
    info = {k: float(meta[k]) for k in ("heldout_accuracy", "train_seconds") if k in meta}
    return model, info


def trained_model(
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    world: ConceptWorld | None = None,
) -> ConceptCNN:
    """The small CNN trained on the concept world, from the cache or trained now (minutes on a CPU).

    Training draws fresh images from ``world`` at every step (a ``torch.Generator`` seeded with
    ``seed``) and initialises the weights under ``torch.manual_seed(seed)`` inside a forked RNG, so
    the caller's global RNG is untouched. It runs on ``TRAINING["threads"]`` (2) torch threads,
    restored afterwards, because the weights depend on the thread count. The weights are cached as
    safetensors under a name keyed by a hash of the configuration (architecture, world parameters,
    seed, training parameters) and written atomically (mode ``0644``); later calls load them
    (safetensors only: no pickle, no code execution). A cached file that is unreadable or was made
    with another configuration is trained again and overwritten, with a warning.

    Parameters
    ----------
    seed : int
        Seed of the data stream and the initial weights.
    cache_dir : path, optional
        Cache directory; default :func:`default_cache_dir` (``$CONCEPTLENS_CACHE``,
        ``$XDG_CACHE_HOME/conceptlens`` or ``~/.cache/conceptlens``).
    progress : bool, optional
        Show a tqdm progress bar while training; default: only when stderr is a terminal (and not
        under CI).
    world : ConceptWorld, optional
        The world to train on; default ``ConceptWorld()``. Its ``seed`` does not matter.

    Returns
    -------
    ConceptCNN
        In eval mode; maps ``x [N, 3, S, S]`` as :meth:`ConceptWorld.sample` returns it to logits
        ``[N, n_classes]``. Extra attributes: ``preset`` (size, mean, std, class names),
        ``world_config`` (``ConceptWorld(**model.world_config)`` rebuilds the world) and
        ``training_info`` (held-out accuracy on 2,000 images, training seconds, cache path).
    """
    seed = check_int("seed", seed, 0)
    if world is None:
        world = ConceptWorld()
    elif not isinstance(world, ConceptWorld):
        raise ParameterError(f"world must be a ConceptWorld or None, got {type(world).__name__}")
    show = _progress_enabled(progress)
    config = _model_config(world, seed)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / f"concept_cnn-{_config_key(config)}.safetensors"

    model: ConceptCNN | None = None
    info: dict[str, Any] = {}
    if path.is_file():
        try:
            model, info = _load(path, config, world.n_classes)
        except Exception as err:  # noqa: BLE001 - any unreadable cache file is simply rebuilt
            warnings.warn(
                f"ignoring the unusable cached model {path} ({err}); training a new one", stacklevel=2
            )
            model = None
    if model is None:
        model, info = _train(world, seed, show)
        meta = {"config": json.dumps(config, sort_keys=True), **{k: repr(v) for k, v in info.items()}}
        try:
            _save_atomic(model, path, meta)  # creates the folder when missing
        except OSError as err:
            warnings.warn(
                f"could not cache the trained model in {folder} ({err}); set CONCEPTLENS_CACHE to a writable "
                "directory to avoid retraining next time",
                stacklevel=2,
            )
    info["cache_path"] = str(path)
    model.preset = world.preset  # type: ignore[assignment]
    model.world_config = world.config  # type: ignore[assignment]
    model.training_info = info  # type: ignore[assignment]
    return model
