"""Images from anywhere, in batches: tensors, files, folders, globs, ImageFolder trees, Datasets, DataLoaders.

Notation: ``N`` images in a source, ``b`` images per batch, ``x_b [b,3,S,S]`` one batch of preprocessed
(normalised) images, ``y_b [b]`` their labels when the source has any, ``A [N,h,w,C]`` activations at a
layer, ``K`` the model's classes.

An :class:`ImageSource` never holds all images: files are decoded batch by batch (with the model's preset,
as :func:`~conceptlens.io.images.load_images` does), a ``Dataset`` is read through a ``DataLoader``
(``batch_size``, ``num_workers``), a ``DataLoader`` is iterated as it is. :func:`extract` runs a split's
``g`` and ``h`` batch by batch and keeps the activations in memory while they fit in ``memory_budget``
bytes (default: a quarter of the machine's RAM); above it every row goes to an on-disk
:class:`~conceptlens.io.store.ActivationStore` (a temporary folder unless ``store_dir`` is given). The
rows are the same either way, in the same order, so what is computed from them is too.

The split is duck-typed (``g``, ``h``, ``layer``): this module sits below :mod:`conceptlens.split`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlens._check import check_int, did_you_mean
from conceptlens.errors import ActivationError, ImageError, ParameterError
from conceptlens.io.images import list_image_files, load_images, resize_center_crop, to_tensor01
from conceptlens.io.presets import DEFAULT_PRESET, Preset
from conceptlens.io.store import ActivationStore
from conceptlens.progress import progress_bar

__all__ = ["ImageSource", "as_source", "extract", "Extracted", "RowBuffer", "default_memory_budget",
           "parse_bytes"]

_IMAGE_KEYS = ("image", "images", "pixel_values", "img", "x")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def default_memory_budget() -> int:
    """A quarter of the machine's physical memory in bytes (1 GiB when it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def parse_bytes(value: int | float | str | None) -> int:
    """Bytes from ``1_000_000``, ``"512MB"``, ``"2 GiB"``, ``"1.5G"``; None: :func:`default_memory_budget`."""
    if value is None:
        return default_memory_budget()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", str(value).lower())
    if isinstance(value, bool) or m is None:
        raise ParameterError(f"memory_budget must be a number of bytes or a size like '512MB' or '2GiB', "
                             f"got {value!r}")
    scale = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[m.group(2)]
    base = 1024 if m.group(3).startswith("i") else 1000
    return int(float(m.group(1)) * base**scale)


# ---------------------------------------------------------------------------------------------- batches
def _check_batch(x: Any, where: str) -> torch.Tensor:
    """``x`` if it is a float ``[b,C,H,W]`` tensor, else an ImageError saying how to make one."""
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"{where} yielded a {type(x).__name__}, not a tensor of images [B,3,H,W]; make "
                         "its dataset return tensors (e.g. torchvision transforms ending in ToTensor + "
                         "Normalize) or pass the Dataset itself, whose PIL images conceptlens preprocesses")
    if x.ndim != 4:
        raise ImageError(f"{where} yielded images of shape {list(x.shape)}; expected a batch [B,3,H,W] "
                         "(a Dataset's items [3,H,W] are batched by passing the Dataset or a DataLoader)")
    if not x.is_floating_point():
        raise ImageError(f"{where} yielded {x.dtype} images of shape {list(x.shape)}; expected normalised "
                         "float images: add transforms.ConvertImageDtype(torch.float) and transforms."
                         "Normalize(preset.mean, preset.std), or pass PIL images through a Dataset")
    return x


def _labels(y: Any, b: int, where: str) -> torch.Tensor:
    t = torch.as_tensor(y) if not isinstance(y, torch.Tensor) else y
    if t.ndim != 1 or t.shape[0] != b or t.is_floating_point() or t.dtype == torch.bool:
        raise ImageError(f"{where} yielded labels {list(t.shape)} of dtype {t.dtype} for {b} images; "
                         "expected one integer class index per image")
    return t.long().cpu()


def _split_item(item: Any) -> tuple[Any, Any]:
    """``(images, labels or None)`` from a batch / item: a tensor, ``(x, y, …)`` or a dict."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    if isinstance(item, dict):
        xk = next((k for k in _IMAGE_KEYS if k in item), None)
        if xk is None:
            raise ImageError(f"a batch dict has keys {sorted(map(str, item))}; expected the images under "
                             f"one of {', '.join(_IMAGE_KEYS)}")
        return item[xk], next((item[k] for k in _LABEL_KEYS if k in item), None)
    return item, None


class _Collate:
    """DataLoader collate for a Dataset: PIL images / uint8 arrays get the preset; tensors are kept."""

    def __init__(self, preset: Preset) -> None:
        self.preset = preset

    def image(self, v: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(v, (Image.Image, np.ndarray)):
            x01 = to_tensor01(v).unsqueeze(0)
            return self.preset.normalize(resize_center_crop(x01, self.preset.size))[0]
        if isinstance(v, torch.Tensor) and v.ndim == 3:
            return v
        shape = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ImageError(f"a Dataset item's image is {shape}; expected a PIL image, a uint8 array [H,W,3] or "
                         "a normalised tensor [3,H,W]")

    def __call__(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        pairs = [_split_item(it) for it in items]
        imgs = [self.image(x) for x, _ in pairs]
        if len({tuple(t.shape) for t in imgs}) > 1:
            raise ImageError("a Dataset's images have different sizes "
                             f"({sorted({tuple(t.shape) for t in imgs})}); resize them to one size in its "
                             "transform, or return PIL images and conceptlens applies the model's preset")
        ys = [y for _, y in pairs]
        labels = None if any(y is None for y in ys) else torch.as_tensor([int(y) for y in ys])
        return torch.stack(imgs), labels


@dataclass
class ImageSource:
    """Preprocessed images in batches, from a tensor, paths, an ImageFolder tree, a Dataset or a DataLoader.

    Parameters
    ----------
    data
        A tensor ``[N,3,H,W]`` of normalised images; a path, folder, glob or list of paths (decoded lazily
        with ``preset``); a folder whose subfolders hold the images (ImageFolder layout: labels are the
        subfolders' sorted positions, as torchvision's); a ``torch.utils.data.Dataset`` of images or
        ``(image, label)`` pairs (PIL images get ``preset``; tensors are taken as normalised); or a
        ``DataLoader`` yielding ``[B,3,H,W]`` batches, ``(images, labels)`` or dicts.
    preset
        Size, mean and std for decoded files and PIL images (the model's ``preset``).
    batch_size, num_workers
        Images per batch, and worker processes of the DataLoader built for a Dataset or files.
    class_folder
        ImageFolder layout: the subfolder (class) to read; None reads every subfolder.
    recursive
        Look into subfolders of plain folders.
    progress
        A progress bar over batches (None: on a terminal only).
    select
        Keep only the images whose label is this class index (needs labels).
    """

    data: Any
    preset: Preset | None = None
    batch_size: int = 64
    num_workers: int = 0
    class_folder: str | None = None
    recursive: bool = False
    progress: bool | None = None
    select: int | None = None
    _files: list[Path] | None = field(default=None, repr=False)
    _file_labels: list[int] | None = field(default=None, repr=False)
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1, hint="images per forward pass")
        check_int("num_workers", self.num_workers, 0, hint="0 loads in the main process")
        self.preset = DEFAULT_PRESET if self.preset is None else self.preset
        d = self.data
        if isinstance(d, torch.Tensor):
            if d.ndim != 4 or d.shape[0] == 0 or not d.is_floating_point():
                _check_batch(d, "the image tensor")
                raise ImageError(f"expected images as a tensor [N,3,H,W] with N ≥ 1, got {list(d.shape)}")
        elif isinstance(d, (str, Path)) or (isinstance(d, (list, tuple)) and d and
                                             all(isinstance(p, (str, Path)) for p in d)):
            self._files_from(d)
        elif self.class_folder is not None:
            raise ParameterError("class_folder is for a folder in the ImageFolder layout "
                                 "(data/<class>/*.jpg)")
        elif not (_is_dataset(d) or _is_loader(d)):
            raise ImageError(f"cannot read images from a {type(d).__name__}; give a tensor [N,3,H,W], a "
                             "path, folder, glob or list of paths, a torch Dataset or a DataLoader")

    def _files_from(self, d: Any) -> None:
        folder = Path(d) if isinstance(d, (str, Path)) else None
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if folder is not None and folder.is_dir() else []
        tree = bool(subdirs) and (self.class_folder is not None or not any(
            p.is_file() and not p.name.startswith(".") for p in folder.iterdir()))  # type: ignore[union-attr]
        if not tree:
            if self.class_folder is not None:
                raise ParameterError(f"class_folder={self.class_folder!r} needs a folder of class subfolders "
                                     f"(ImageFolder layout), but {str(d)!r} has none")
            self._files = list_image_files(d, self.recursive)
            return
        self.classes = [p.name for p in subdirs]
        files, labels = [], []
        for i, sub in enumerate(subdirs):
            if self.class_folder is not None and sub.name != self.class_folder:
                continue
            fs = list_image_files(sub, True) if any(p.is_file() for p in sub.rglob("*")) else []
            files += fs
            labels += [i] * len(fs)
        if self.class_folder is not None and self.class_folder not in self.classes:
            raise ParameterError(f"no class folder {self.class_folder!r} in {str(d)!r}"
                                 f"{did_you_mean(self.class_folder, self.classes)}; it has "
                                 f"{len(self.classes)} class folders")
        if not files:
            raise ImageError(f"the class folder(s) of {str(d)!r} hold no image files")
        self._files, self._file_labels = files, labels

    # -- reading ----------------------------------------------------------------------------------
    @property
    def has_labels(self) -> bool:
        """Whether batches come with labels (an ImageFolder tree; a Dataset / DataLoader: once read)."""
        return self._file_labels is not None or _is_dataset(self.data) or _is_loader(self.data)

    @property
    def paths(self) -> list[Path] | None:
        """The image files in the order :meth:`batches` reads them (None for tensors, Datasets, loaders)."""
        return None if self._files is None else list(self._files)

    def __len__(self) -> int:
        """``N`` when known without reading (tensor, files, Dataset); a TypeError otherwise."""
        if isinstance(self.data, torch.Tensor):
            return int(self.data.shape[0])
        if self._files is not None:
            return len(self._files)
        if _is_dataset(self.data):
            return len(self.data)
        raise TypeError("the length of a DataLoader source is known only after reading it")

    def _raw(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        d, b = self.data, self.batch_size
        if isinstance(d, torch.Tensor):
            for i in range(0, d.shape[0], b):
                yield d[i : i + b], None
        elif self._files is not None:
            yield from self._decode(self._files, self._file_labels)
        else:
            from torch.utils.data import DataLoader

            loader = d if _is_loader(d) else DataLoader(
                d, batch_size=b, shuffle=False, num_workers=self.num_workers,
                collate_fn=_Collate(self.preset))  # type: ignore[arg-type]
            where = "the DataLoader" if _is_loader(d) else "the Dataset"
            for item in loader:
                x, y = _split_item(item)
                x = _check_batch(x, where)
                yield x, (None if y is None else _labels(y, int(x.shape[0]), where))

    def _decode(self, files: list[Path], labels: list[int] | None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        b = self.batch_size
        pos = {str(f): i for i, f in enumerate(files)}
        for i in range(0, len(files), b):
            chunk = files[i : i + b]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    x, names = load_images(chunk, self.preset, progress=False, return_paths=True)
                except ImageError:
                    x, names = None, []  # every file of the batch unreadable: warned below
            for w in caught:
                warnings.warn(str(w.message), stacklevel=4)
            if x is None:
                if len(chunk) == 1:
                    warnings.warn(f"skipping unreadable image {str(chunk[0])!r}", stacklevel=4)
                continue
            y = None if labels is None else torch.tensor([labels[pos[n]] for n in names])
            yield x, y

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(x_b [b,3,S,S], y_b [b] or None)`` in order; with ``select``, only images of that label.

        Raises
        ------
        ImageError
            A DataLoader batch that is not a float ``[B,3,H,W]`` tensor, or labels of the wrong shape;
            ``select`` on a source without labels, or a selection that keeps no image.
        """
        total = None
        try:
            total = -(-len(self) // self.batch_size)
        except TypeError:
            pass
        kept = 0
        for x, y in progress_bar(self._raw(), "reading images", enable=self.progress, total=total,
                                 min_items=2):
            if self.select is not None:
                if y is None:
                    raise ImageError("target_images='label' needs labels: pass a Dataset / DataLoader of "
                                     "(image, label) pairs or an ImageFolder tree, or select the images "
                                     "yourself")
                keep = y == self.select
                if not bool(keep.any()):
                    continue
                x, y = x[keep.to(x.device)], y[keep]
            kept += int(x.shape[0])
            yield x, y
        if kept == 0:
            what = f"with label {self.select}" if self.select is not None else "at all"
            raise ImageError(f"the source gave no image {what}; check the data (and, with "
                             "target_images='label', that the labels use the model's class indices)")

    def take(self, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The images ``[m,3,S,S]`` at positions ``index [m]`` of :meth:`batches`' order (≤ one pass)."""
        want = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        if isinstance(self.data, torch.Tensor) and self.select is None:
            return self.data[torch.tensor(want, dtype=torch.long, device=self.data.device)]
        found: dict[int, torch.Tensor] = {}
        need, start = set(want), 0
        for x, _ in self.batches():
            for j in range(x.shape[0]):
                if start + j in need:
                    found[start + j] = x[j]
            start += int(x.shape[0])
            if len(found) == len(need):
                break
        missing = sorted(need - set(found))
        if missing:
            raise ParameterError(f"image positions {missing[:5]} are beyond the source's {start} images")
        return torch.stack([found[i] for i in want]) if want else torch.empty(0)

    def load_all(self, memory_budget: int | str | None = None) -> torch.Tensor:
        """Every image in one tensor ``[N,3,S,S]``, refused (ParameterError) above ``memory_budget`` bytes."""
        if isinstance(self.data, torch.Tensor) and self.select is None:
            return self.data
        budget, parts, used = parse_bytes(memory_budget), [], 0
        for x, _ in self.batches():
            used += x.numel() * x.element_size()
            if used > budget:
                raise ParameterError(f"the images exceed memory_budget={budget} bytes; this step holds every "
                                     "image in memory: pass fewer images, or a larger memory_budget")
            parts.append(x)
        return torch.cat(parts)


def _is_loader(d: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(d, DataLoader)


def _is_dataset(d: Any) -> bool:
    from torch.utils.data import Dataset

    return isinstance(d, Dataset) and hasattr(d, "__getitem__") and hasattr(d, "__len__")


def as_source(data: Any, preset: Preset | None = None, **options: Any) -> ImageSource:
    """``data`` as an :class:`ImageSource` (an ImageSource is returned as it is, its options updated).

    Parameters
    ----------
    data
        Anything :class:`ImageSource` reads.
    preset
        The model's preset (for decoded files and PIL images).
    **options
        :class:`ImageSource` fields: ``batch_size``, ``num_workers``, ``class_folder``, ``recursive``,
        ``progress``, ``select``.
    """
    if isinstance(data, ImageSource):
        for k, v in options.items():
            if v is not None:
                setattr(data, k, v)
        return data
    return ImageSource(data, preset=preset, **{k: v for k, v in options.items() if v is not None})


# ----------------------------------------------------------------------------------------- extraction
class RowBuffer:
    """Rows ``[*, C]`` (or ``[b, h, w, C]`` blocks) held in memory up to ``budget`` bytes, then on disk.

    Parameters
    ----------
    budget
        Bytes of rows kept in memory; once the total exceeds it, everything goes to an ActivationStore.
    store_dir
        The store's folder (None: a temporary folder removed by :meth:`close`).
    """

    def __init__(self, budget: int, store_dir: str | os.PathLike[str] | None = None) -> None:
        self.budget, self.store_dir = budget, store_dir
        self.parts: list[torch.Tensor] = []
        self.used = 0
        self.store: ActivationStore | None = None
        self._tmp: str | None = None

    def append(self, block: torch.Tensor) -> None:
        """Add a block of rows (kept on the CPU)."""
        block = block.detach().cpu()
        self.used += block.numel() * block.element_size()
        if self.store is None and self.used > self.budget:
            if self.store_dir is None:
                self._tmp = tempfile.mkdtemp(prefix="conceptlens-acts-")
            self.store = ActivationStore(self._tmp or self.store_dir)  # type: ignore[arg-type]
            if len(self.store):
                raise ParameterError(f"store_dir {str(self.store_dir)!r} already holds activations; give an "
                                     "empty or new folder")
            for p in self.parts:
                self.store.append(p)
            self.parts = []
        if self.store is not None:
            self.store.append(block)
        else:
            self.parts.append(block)

    @property
    def in_memory(self) -> bool:
        """True while every row is held in memory."""
        return self.store is None

    def tensor(self) -> torch.Tensor:
        """The blocks concatenated (in memory only; concatenated once, the blocks then released)."""
        if len(self.parts) > 1:
            self.parts = [torch.cat(self.parts)]
        return self.parts[0]

    def data(self) -> torch.Tensor | ActivationStore:
        """The rows: one tensor in memory, or the store."""
        return self.tensor() if self.store is None else self.store

    def close(self) -> None:
        """Remove the temporary store (a ``store_dir`` the user gave is kept)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


@dataclass
class Extracted:
    """Activations of a stream of images at a layer, in memory or on disk, with what else one pass gives.

    Attributes
    ----------
    rows : RowBuffer
        ``A`` in memory (``[N,h,w,C]``) or an ActivationStore of its rows ``[N·h·w, C]``.
    shape : tuple
        One image's activation shape ``(h, w, C)``.
    logits : torch.Tensor
        ``[N, K]`` the model's logits on each image.
    labels : torch.Tensor or None
        ``[N]`` the source's labels.
    minimum : float
        The smallest activation (the sign check of non-negative methods).
    """

    rows: RowBuffer
    shape: tuple[int, ...]
    logits: torch.Tensor
    labels: torch.Tensor | None
    minimum: float

    @property
    def n_images(self) -> int:
        """``N``."""
        return int(self.logits.shape[0])

    @property
    def in_memory(self) -> bool:
        """Whether ``A`` is held in memory (below the budget)."""
        return self.rows.in_memory

    def data(self) -> torch.Tensor | ActivationStore:
        """``A [N,h,w,C]`` in memory, or the store."""
        return self.rows.data()

    def batches(self, images: int) -> Iterator[torch.Tensor]:
        """``A`` again, ``[≤ images, h, w, C]`` at a time (read back from the store above the budget)."""
        if self.rows.in_memory:
            yield from self.rows.tensor().split(images)
            return
        per = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        for r in self.rows.store.iter_batches(images * per):  # type: ignore[union-attr]
            yield r.reshape(-1, *self.shape)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], images: int) -> torch.Tensor:
        """``fn`` applied to ``A`` batch by batch and concatenated (e.g. the codes ``U [N,h,w,k]``), written
        into one preallocated tensor (no second copy of the result)."""
        out: torch.Tensor | None = None
        i = 0
        for a in self.batches(images):
            r = fn(a)
            if out is None:
                out = r.new_empty((self.n_images, *r.shape[1:]))
            out[i : i + r.shape[0]] = r
            i += int(r.shape[0])
        if out is None or i != self.n_images:  # extract() refuses an empty source; a store changed under us
            raise ActivationError(f"read {i} images' activations where {self.n_images} were extracted; "
                                  "extract the images again (was the activation store modified?)")
        return out

    def close(self) -> None:
        """Remove a temporary store."""
        self.rows.close()


def extract(
    split: Any,
    source: ImageSource,
    *,
    memory_budget: int | str | None = None,
    store_dir: str | os.PathLike[str] | None = None,
) -> Extracted:
    """Run ``g`` and ``h`` over a source batch by batch; keep ``A`` in memory below the budget, else on disk.

    Parameters
    ----------
    split
        A :class:`~conceptlens.split.model_split.ModelSplit` (``g``, ``h``, ``layer``).
    source
        The images.
    memory_budget
        Bytes of activations to keep in memory (a number or ``"2GB"``; None: a quarter of the RAM).
    store_dir
        Folder of the ActivationStore above the budget (None: a temporary folder).

    Returns
    -------
    Extracted
        ``A`` (tensor ``[N,h,w,C]`` or store), the logits ``[N,K]``, labels, the minimum activation.

    Raises
    ------
    ActivationError
        NaN / Inf activations.
    """
    rows = RowBuffer(parse_bytes(memory_budget), store_dir)
    logits, labels, lo, shape = [], [], float("inf"), None
    try:
        for x, y in source.batches():
            with torch.no_grad():
                A = split.g(x, progress=False)
                if not torch.isfinite(A).all():
                    raise ActivationError(f"activations at layer {split.layer!r} contain NaN/Inf; check the "
                                          "images' normalisation (the model's preset)")
                logits.append(split.h(A).detach().cpu())
            if shape is None:
                shape = tuple(A.shape[1:])
            elif tuple(A.shape[1:]) != shape:
                raise ImageError(f"images of different sizes give activations {list(A.shape[1:])} and "
                                 f"{list(shape)}; resize every image to one size (the preset does for files)")
            lo = min(lo, float(A.min()))
            rows.append(A)
            if y is not None:
                labels.append(y)
    except BaseException:
        rows.close()
        raise
    return Extracted(rows=rows, shape=shape or (), logits=torch.cat(logits),
                     labels=torch.cat(labels) if labels else None, minimum=lo)
