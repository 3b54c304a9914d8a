"""The data of the two standard λ sweeps: a real model on the demo crops, and the ground-truth world.

A :class:`SweepData` holds what :func:`~conceptlens.workflows.sweep.face_sweep` needs: the activations
``A [N, h, w, C]`` of the images, the head ``h``, the target classes and, when the images are not crops
already, the activations of CRAFT's crops ``[M, h, w, C]`` with the image each crop was cut from (so that
stability can split crops by image). ``conceptlens sweep`` and ``conceptlens bench face`` build theirs
here, so that both sweep the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import conceptlens.io as data
from conceptlens._check import check_int
from conceptlens.errors import TargetError
from conceptlens.explainer import resolve_target
from conceptlens.io.models import load as load_model
from conceptlens.metrics.face import predictions
from conceptlens.split.model_split import ModelSplit

__all__ = ["SweepData", "real_sweep_data", "world_sweep_data"]

Head = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SweepData:
    """Activations, head and targets of a sweep, with CRAFT's crops when the images are not crops.

    Attributes
    ----------
    A : Tensor ``[N, h, w, C]``
        Activations of the images.
    head : callable
        ``ModelSplit.h``.
    targets : list[int]
        Classes explained (the class-dependent numbers are averaged over them).
    craft_A : Tensor ``[M, h, w, C]`` or None
        Activations of CRAFT's crops; None when the images are crops already.
    craft_index : Tensor ``[M]`` or None
        Image of each crop.
    config : dict
        ``dataset``, ``model``, ``layer``, ``target_names``, how the images were made.
    """

    A: torch.Tensor
    head: Head
    targets: list[int]
    craft_A: torch.Tensor | None
    craft_index: torch.Tensor | None
    config: dict[str, Any]


def _craft_crops(
    split: Any, x: torch.Tensor, patch: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    c, idx, _ = data.crops(x, patch_size=patch, out_size=x.shape[-1])
    return split.g(c, progress=progress), idx


def real_sweep_data(
    model: str = "efficientnet_lite0",
    *,
    weights: str | None = None,
    images: str | Sequence[str] | None = None,
    layer: str = "auto",
    target: int | str | None = None,
    crop: int | None = None,
    craft_patch: int | None = None,
    n_photos: int | None = None,
    progress: bool | None = None,
) -> SweepData:
    """The sweep's data on a real model: by default EfficientNet-Lite0 on the demo crops.

    Parameters
    ----------
    model, weights
        As in :func:`conceptlens.io.models.load`.
    images
        Files, folders or globs; None: the bundled sample photos cut into ``crop``-pixel crops (the demo
        set), target = the class predicted for 'chelsea'.
    layer
        Layer name or ``"auto"``.
    target
        Class index or name; default: the class predicted for 'chelsea' (demo) or the most predicted one.
    crop
        Cut the images into crops of this many pixels (resized to the input size); default 112 for the demo
        photos, 0 (whole images) for ``images``.
    craft_patch
        Crop size in pixels for CRAFT's reference bank; default: the images themselves when they are
        crops, else CRAFT's 64 px on 224 px (scaled to the input size). 0: always the images themselves.
    n_photos
        Demo only: use the first ``n_photos`` sample photos ('chelsea' first) instead of all.
    progress
        Progress bars of the forward passes.

    Returns
    -------
    SweepData
    """
    m = load_model(model, weights=weights)
    split = ModelSplit(m, layer)
    preset = m.preset
    if images is None:
        names = data.sample_image_names()
        if n_photos is not None:
            names = names[: check_int("n_photos", n_photos, 1)]
        photos = data.sample_images(preset, names=names)
        patch = 112 if crop is None else crop
        x = data.crops(photos, patch_size=patch, out_size=photos.shape[-1])[0] if patch else photos
        source = (
            f"the demo crops ({len(names)} sample photos, {patch}-px crops)" if patch else "the sample photos"
        )
        is_crops = bool(patch)
        if target is None:
            with torch.no_grad():
                target = int(m(photos[:1]).argmax(1))
    else:
        x = data.load_images(images, preset=preset)
        is_crops = bool(crop)
        if crop:
            x = data.crops(x, patch_size=crop, out_size=x.shape[-1])[0]
        source = f"{x.shape[0]} {'crops' if crop else 'images'} of {images}"
    A = split.g(x, progress=progress)
    n_out = int(split.h(A[:1]).shape[1])
    if target is None:
        with torch.no_grad():
            target = int(torch.bincount(predictions(split.h, A), minlength=n_out).argmax())
    c = resolve_target(target, list(preset.classes), n_out)
    craft_A = craft_index = None
    if craft_patch is None:
        craft_patch = 0 if is_crops else max(8, round(x.shape[-1] * 64 / 224))
    if craft_patch:
        craft_A, craft_index = _craft_crops(split, x, craft_patch, bool(progress))
    cname = preset.classes[c] if c < len(preset.classes) else str(c)
    dataset = ("EfficientNet-Lite0 on " if model == "efficientnet_lite0" else f"{model} on ") + source
    return SweepData(
        A=A,
        head=split.h,
        targets=[c],
        craft_A=craft_A,
        craft_index=craft_index,
        config={
            "dataset": dataset,
            "model": model,
            "layer": split.layer,
            "target_names": [cname],
            "craft_patch": craft_patch,
        },
    )


def world_sweep_data(
    *,
    n_per_class: int = 20,
    target: int | str | Sequence[int | str] | None = None,
    craft_patch: int | None = None,
    seed: int = 0,
) -> SweepData:
    """The sweep's data on the ground-truth concept world (:mod:`~conceptlens.world`) and its trained CNN.

    Parameters
    ----------
    n_per_class
        Images per class (the first of a seeded stream, as the ground-truth leaderboard draws them).
    target
        One class (index or name, e.g. ``"disc+red"``): its images only. A list of classes, None or
        ``"all"`` (every class): one bank for their images, the class-dependent numbers averaged over them.
    craft_patch
        CRAFT's crop size in pixels; default ``S/3`` (one layout cell, as in the leaderboard).
    seed
        Seed of the image stream.

    Returns
    -------
    SweepData
    """
    from conceptlens import world as synthetic
    from conceptlens.world import leaderboard as groundtruth

    check_int("n_per_class", n_per_class, 1)
    model = synthetic.trained_model(seed=0)
    world = synthetic.ConceptWorld(**model.world_config)
    split = ModelSplit(model, "auto")
    names = list(world.class_names)
    if target is None or (isinstance(target, str) and target.lower() == "all"):
        classes = list(range(world.n_classes))
    elif isinstance(target, (list, tuple)):
        classes = [resolve_target(t, names, world.n_classes) for t in target]
        if not classes:
            raise TargetError("no class given; pass a class index or name, or 'all'")
    else:
        classes = [resolve_target(target, names, world.n_classes)]
    by_class = groundtruth.class_images(world, n_per_class, classes, seed=seed)
    x = torch.cat([by_class[c][0] for c in classes])
    A = split.g(x, progress=False)
    patch = max(8, world.size // 3) if craft_patch is None else craft_patch
    craft_A = craft_index = None
    if patch:
        craft_A, craft_index = _craft_crops(split, x, patch, False)
    which = (
        "all classes"
        if len(classes) == world.n_classes
        else f"class {names[classes[0]]!r}"
        if len(classes) == 1
        else f"{len(classes)} classes"
    )
    return SweepData(
        A=A,
        head=split.h,
        targets=classes,
        craft_A=craft_A,
        craft_index=craft_index,
        config={
            "dataset": f"the ground-truth concept world ({which}, {n_per_class} images per class)",
            "model": "synthetic.trained_model(seed=0)",
            "layer": split.layer,
            "target_names": [names[c] for c in classes],
            "craft_patch": patch,
        },
    )
