"""Sample photos shipped *inside* installed packages (scikit-image, scikit-learn): read from disk, never
fetched. ``sample_images(preset)`` gives the demo's 13 photos, normalised for the model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import torch

from conceptlens.errors import ImageError, ParameterError, nearest
from conceptlens.io.images import load_images
from conceptlens.io.presets import Preset

__all__ = ["sample_images", "sample_image_names"]


# Photos shipped *inside* the installed packages (read from disk, never fetched): name → (package, file).
_SAMPLES: dict[str, tuple[str, str]] = {
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "astronaut": ("skimage", "data/astronaut.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"),
    "camera": ("skimage", "data/camera.png"),
    "coins": ("skimage", "data/coins.png"),
    "moon": ("skimage", "data/moon.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "data/ihc.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    # Available by name but not in the default list (textures, documents, microscopy).
    "clock": ("skimage", "data/clock_motion.png"),
    "page": ("skimage", "data/page.png"),
    "text": ("skimage", "data/text.png"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "cell": ("skimage", "data/cell.png"),
    "microaneurysms": ("skimage", "data/microaneurysms.png"),
}
_DEFAULT_SAMPLES = (
    "chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera", "coins", "moon",
    "hubble_deep_field", "immunohistochemistry", "retina", "china", "flower",
)  # fmt: skip
_ALIASES = {"cat": "chelsea", "motorcycle_left": "motorcycle", "ihc": "immunohistochemistry"}


def _sample_path(name: str) -> Path | None:
    pkg, rel = _SAMPLES[name]
    # find_spec locates the package without importing it (no network, no import cost).
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / rel
        if p.is_file():
            return p
    return None


def sample_image_names() -> list[str]:
    """Names of the default sample photos available offline, ``"chelsea"`` first.

    Photos come from ``skimage.data`` (always installed) and, if scikit-learn is installed, its two
    sample images (``"china"``, ``"flower"``). Only files shipped inside the packages are used.

    Returns
    -------
    list[str]
        The names :func:`sample_images` loads by default.
    """
    return [n for n in _DEFAULT_SAMPLES if _sample_path(n) is not None]


@overload
def sample_images(
    preset: Preset | None = ...,
    *,
    names: Sequence[str] | None = ...,
    size: int | None = ...,
    return_names: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def sample_images(
    preset: Preset | None = ...,
    *,
    names: Sequence[str] | None = ...,
    size: int | None = ...,
    return_names: Literal[True],
) -> tuple[torch.Tensor, list[str]]: ...


def sample_images(
    preset: Preset | None = None,
    *,
    names: Sequence[str] | None = None,
    size: int | None = None,
    return_names: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """Real photos shipped with scikit-image (and scikit-learn), loaded like :func:`load_images`.

    Parameters
    ----------
    preset
        As in :func:`load_images` (ImageNet statistics at 224 if ``None``).
    names
        Which photos (see :func:`sample_image_names`; also ``"clock"``, ``"page"``, ``"text"``,
        ``"brick"``, ``"grass"``, ``"gravel"``, ``"cell"``, ``"microaneurysms"``; ``"cat"`` is
        ``"chelsea"``). Default: :func:`sample_image_names`.
    size
        Overrides ``preset.size``.
    return_names
        Also return the names.

    Returns
    -------
    torch.Tensor
        ``[N, 3, S, S]`` float32 normalised images, in the order of ``names``.
    list[str]
        Only with ``return_names=True``.

    Raises
    ------
    ParameterError
        An unknown name (the message lists the closest ones).
    ImageError
        A requested photo that is not installed (e.g. ``"china"`` without scikit-learn).
    """
    if names is None:
        chosen = sample_image_names()
        if not chosen:
            raise ImageError("no sample photo found: is scikit-image installed? (pip install scikit-image)")
    else:
        if isinstance(names, str):
            names = [names]
        chosen = []
        for n in names:
            key = _ALIASES.get(n, n)
            if key not in _SAMPLES:
                known = sorted(set(_SAMPLES) | set(_ALIASES))
                raise ParameterError(
                    f"unknown sample image {n!r}; did you mean {nearest(n, known)}? Known: {known}."
                )
            chosen.append(key)
        if not chosen:
            raise ParameterError("names is empty; pass None for the default sample photos.")
    paths = []
    for n in chosen:
        p = _sample_path(n)
        if p is None:
            pkg = _SAMPLES[n][0]
            raise ImageError(
                f"sample image {n!r} is not available offline: its package {pkg!r} is missing or does not "
                f"ship it; install {'scikit-learn' if pkg == 'sklearn' else 'scikit-image'} or pick another "
                f"from {sample_image_names()}."
            )
        paths.append(p)
    x = load_images(paths, preset, size=size, progress=False)
    return (x, list(chosen)) if return_names else x
