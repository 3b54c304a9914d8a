"""Matplotlib figures and PNG helpers of the report (numpy in, PNG out: this module is an edge).

Notation: ``img [3,H,W]`` a picture in [0, 1] (channels first, as the library's tensors), ``pic [H,W,3]``
the same picture channels-last for display, ``map [H,W]`` one concept's map at image resolution, ``k``
the number of concepts, ``n`` the number of pictures in a strip.

The figures are plain :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas. They are never
registered with ``pyplot``: nothing leaks into a user's session, no figure has to be closed, and the
user's interactive backend (a notebook's inline backend, say) is left untouched. That is why this module
does not call ``matplotlib.use("Agg")``: a library that switches the global backend on import breaks
``%matplotlib inline`` for everything imported after it, while a bare ``Figure`` renders headless anyway.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from conceptlens._io import atomic_write_with
from conceptlens.errors import ImageError, ParameterError

__all__ = [
    "heatmap_overlay",
    "keep_mask",
    "to_pictures",
    "save_png",
    "save_picture",
    "importance_figure",
    "prototype_strip",
    "local_figure",
    "local_terms",
    "edit_figure",
    "POSITIVE",
    "NEGATIVE",
]

#: Bar colours: a concept that raises the logit, one that lowers it, and the non-concept terms.
POSITIVE = "#2f6fdd"
NEGATIVE = "#d9534f"
NEUTRAL = "#9aa3ad"
TOTAL = "#1d232a"
CONTOUR = "#ffd400"
_CONTOUR_RGB = (255, 212, 0)

_DPI = 100
# PNG compression: a 1,144 × 246 photo strip took 23 ms at level 1, 33 ms at 3 and 74 ms at zlib's default 6,
# for files 21 % larger than at 6 (level 3: 11 %)
_ZLIB = 1
_FONT = 12  # points; figures are shown at about half size on a phone, where 12 pt still reads


def _as_array(a: Any, name: str) -> np.ndarray:
    """A numpy float array from a numpy array or a (possibly GPU, possibly grad) torch tensor."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} must be a numeric array, got {type(a).__name__}") from exc
    return arr


def _labelled(values: Any, name: str, labels: Sequence[str], what: str) -> np.ndarray:
    """``values`` as a flat array ``[k]``, checked to have one entry per label (``what`` names them)."""
    v = _as_array(values, name).reshape(-1)
    if len(labels) != v.shape[0]:
        raise ParameterError(f"got {len(labels)} labels for {v.shape[0]} {what}")
    return v


def _value_axis(ax: Any, xlabel: str) -> None:
    """A bar chart's value axis: a zero line, 5 ticks, ``xlabel``, a grid, no top or right frame."""
    ax.axvline(0, color=TOTAL, lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    _xlabel(ax, xlabel)
    ax.tick_params(labelsize=_FONT)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _width(text: str, size: float = _FONT) -> float:
    """Width in points of ``text`` (its longest line) at ``size`` points in DejaVu Sans."""
    font = _font(round(size * 4))  # 4 px per point: sub-point widths
    return max(float(font.getlength(line)) for line in str(text).split("\n")) / 4


def _shorten(text: str, most: float, size: float = _FONT) -> str:
    """``text`` with its end replaced by an ellipsis until it is at most ``most`` wide (:func:`_width`)."""
    t = str(text)
    while _width(t, size) > most and len(t) > 2:
        t = t[:-2] + "…"
    return t


def _xlabel(ax: Any, text: str) -> None:
    """``text`` under the axes, centred on them where it fits (:func:`_fixed_layout`'s bottom margin holds
    it), else centred on the figure, so that a long label is never cut at the figure's edge."""
    fig = ax.get_figure()
    w_pt = float(fig.get_size_inches()[0]) * 72
    if _width(text) <= ax.get_position().width * w_pt:
        ax.set_xlabel(_lit(text), fontsize=_FONT)
    else:
        fig.supxlabel(_lit(text), fontsize=_FONT, y=4 / (float(fig.get_size_inches()[1]) * 72), va="bottom")


def _fixed_layout(fig: Figure, left: Sequence[str], right: Sequence[str] = (), title: str = "") -> list[str]:
    """Lay out a one-axes bar chart from its texts' widths (measured in DejaVu Sans, matplotlib's default
    font): ``left`` the y tick labels, ``right`` a right-hand label column, room for a title above (see
    :func:`_title`); the x tick labels and the x label below. Returns ``left`` with any label wider than
    55 % of the figure shortened with an ellipsis. Matplotlib's constrained layout measured the same texts by
    drawing them and took about half of each chart's time (0.23 of 0.51 s per chart in a 3-method report).
    """
    w_pt, h_pt = (float(v) * 72 for v in fig.get_size_inches())
    width = _width
    pad = 8.0  # points: tick marks and their gap, plus a margin to the figure's edge
    labels = [_shorten(t, 0.55 * w_pt - 2 * pad) for t in left]
    right_w = max((width(str(t)) for t in right), default=0.0) + 2 * pad if right else 2.5 * _FONT
    top = pad + _FONT / 2
    if title:  # drawn by _title once the axes exist
        top += 1.6 * _FONT
    fig.subplots_adjust(left=(max(map(width, labels), default=0.0) + 2 * pad) / w_pt,
                        right=1 - min(0.3, right_w / w_pt), top=1 - top / h_pt,
                        bottom=(2.8 * _FONT + pad) / h_pt)
    return labels

def keep_mask(map: Any, threshold: float = 0.5, normalise: str = "minmax") -> np.ndarray:  # noqa: A002
    """ICE's region of a concept: pixels whose normalised value exceeds ``threshold``.

    Parameters
    ----------
    map
        ``[H, W]`` one concept's map (numpy or torch). NaN and ±inf count as 0.
    threshold
        In [0, 1]; a pixel is kept when its normalised value is ``> threshold`` (strictly).
    normalise
        ``"minmax"`` (the ICE paper's rule, the default): ``(map − min) / (max − min)``; a signed PCA map
        is judged on its whole range. ``"max"``: ``map / max(map)``, the region of a non-negative map
        relative to its peak; a map whose maximum is ≤ 0 then has no region (dividing by a negative
        maximum would flip it). The two agree on non-negative maps whose minimum is 0.

    Returns
    -------
    np.ndarray
        ``[H, W]`` bool. All False for a constant map (the concept is the same everywhere, or absent).
    """
    m = np.nan_to_num(_as_array(map, "map"), nan=0.0, posinf=0.0, neginf=0.0)
    if m.ndim != 2:
        raise ParameterError(f"map must be [H, W], got shape {tuple(m.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ParameterError(f"threshold must be in [0, 1], got {threshold!r}")
    if normalise not in ("minmax", "max"):
        raise ParameterError(f"normalise must be 'minmax' (ICE's rule) or 'max', got {normalise!r}")
    if not m.size:
        return np.zeros(m.shape, dtype=bool)
    mx, mn = float(m.max()), float(m.min())
    if normalise == "max":
        return (m / mx) > threshold if mx > 0.0 else np.zeros(m.shape, dtype=bool)
    if mx - mn <= 0.0:
        return np.zeros(m.shape, dtype=bool)
    return ((m - mn) / (mx - mn)) > threshold


def heatmap_overlay(  # noqa: A002 - ICE's own word
    img: Any, map: Any, threshold: float = 0.5, dim: float = 0.3, normalise: str = "minmax"
) -> np.ndarray:
    """ICE's heatmap: the concept's region at full brightness, the rest of the picture dimmed.

    Parameters
    ----------
    img
        ``[3, H, W]`` picture with values in [0, 1] (numpy or torch).
    map
        ``[H, W]`` the concept's map at the picture's resolution (e.g. ``explain(x).maps[i, j]``).
    threshold
        A pixel belongs to the region when its min-max normalised value is ``> threshold``.
    dim
        Brightness factor in [0, 1] of the pixels outside the region.
    normalise
        ``"minmax"`` (ICE's rule) or ``"max"`` (see :func:`keep_mask`).

    Returns
    -------
    np.ndarray
        ``[H, W, 3]`` float32: ``img`` where the region is, ``img × dim`` elsewhere.
    """
    im = _as_array(img, "img")
    if im.ndim != 3 or im.shape[0] != 3:
        raise ParameterError(f"img must be [3, H, W] in [0, 1], got shape {tuple(im.shape)}")
    if not 0.0 <= dim <= 1.0:
        raise ParameterError(f"dim must be in [0, 1], got {dim!r}")
    keep = keep_mask(map, threshold, normalise)
    if keep.shape != im.shape[1:]:
        raise ParameterError(
            f"map {tuple(keep.shape)} and img {tuple(im.shape[1:])} differ in size; upsample the map to the "
            "image first (ConceptExplainer.explain(x).maps already is)"
        )
    factor = np.where(keep, np.float32(1.0), np.float32(dim)).astype(np.float32)
    return im.transpose(1, 2, 0) * factor[:, :, None]


def to_pictures(x: Any, preset: Any = None) -> np.ndarray:
    """Normalised images ``x [N,3,H,W]`` → pictures ``[N,H,W,3]`` float32 in [0, 1] for display.

    Parameters
    ----------
    x
        ``[N, 3, H, W]`` images as the model sees them (torch or numpy).
    preset
        A :class:`~conceptlens.io.presets.Preset` whose ``denormalize`` undoes the normalisation; None
        rescales each image to [0, 1] by its own minimum and maximum (a constant image becomes mid-grey).
    """
    if preset is not None and hasattr(x, "detach"):
        x = preset.denormalize(x.detach())
    a = _as_array(x, "x")
    if a.ndim != 4 or a.shape[1] != 3:
        raise ImageError(f"expected images [N,3,H,W], got shape {tuple(a.shape)}")
    if preset is not None and not hasattr(x, "detach"):
        mean = np.asarray(preset.mean, dtype=np.float32)[None, :, None, None]
        std = np.asarray(preset.std, dtype=np.float32)[None, :, None, None]
        a = a * std + mean
    elif preset is None:
        lo = a.min(axis=(1, 2, 3), keepdims=True)
        hi = a.max(axis=(1, 2, 3), keepdims=True)
        span = hi - lo
        a = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1.0), 0.5)
    a = np.nan_to_num(a, nan=0.0)
    return np.clip(a, 0.0, 1.0).transpose(0, 2, 3, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ saving
def save_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int = _DPI) -> Path:
    """Render ``fig`` to a PNG at ``path`` (atomically: temp file + rename) and release it.

    Parameters
    ----------
    fig
        A matplotlib figure (one made by this module or by ``pyplot``; a pyplot figure is closed).
    path
        Where to write; parent folders are created.
    dpi
        Pixels per inch of the PNG.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    p = Path(path)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # attaches itself to fig: PNG rendering without any pyplot backend
    try:
        atomic_write_with(p, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                                   pil_kwargs={"compress_level": _ZLIB}))
    finally:
        if "matplotlib.pyplot" in sys.modules:  # only pyplot keeps figures alive; ours are garbage now
            sys.modules["matplotlib.pyplot"].close(fig)
    return p


def save_picture(pic: Any, path: str | os.PathLike[str]) -> Path:
    """Write a picture ``[H,W,3]`` (float in [0, 1] or uint8) as a PNG, atomically. Returns the path."""
    from PIL import Image

    a = np.asarray(pic.detach().cpu().numpy() if hasattr(pic, "detach") else pic)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ParameterError(f"a picture must be [H, W, 3], got shape {tuple(a.shape)}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.nan_to_num(a.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(a, "RGB")
    return atomic_write_with(path, lambda f: im.save(f, format="PNG", compress_level=_ZLIB))


# ------------------------------------------------------------------------------------------------ figures
def _lit(s: str) -> str:
    """Draw a user string literally: a '$' in a class or file name must not start matplotlib mathtext."""
    return str(s).replace("$", r"\$")


def importance_figure(
    values: Any,
    labels: Sequence[str],
    *,
    ci_low: Any = None,
    ci_high: Any = None,
    xlabel: str = "importance",
) -> Figure:
    """Horizontal bars of concept importance, most important at the top.

    Parameters
    ----------
    values
        ``[k]`` importance of each concept.
    labels
        ``k`` concept names, in the order of ``values``.
    ci_low, ci_high
        ``[k]`` confidence bounds (both or neither), drawn as error bars.
    xlabel
        Axis label (e.g. ``"importance (sobol)"``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    v = _labelled(values, "values", labels, "importance values")
    k = v.shape[0]
    order = np.argsort(-v, kind="stable")
    xerr = None
    if ci_low is not None and ci_high is not None:
        lo = _as_array(ci_low, "ci_low").reshape(-1)
        hi = _as_array(ci_high, "ci_high").reshape(-1)
        # a bound on the wrong side of the estimate (possible with bootstrap CIs) draws no bar on that side
        xerr = np.stack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])[:, order]
    fig = Figure(figsize=(5.6, 1.0 + 0.36 * k))
    shown = _fixed_layout(fig, [labels[j] for j in order])
    ax = fig.add_subplot()
    y = np.arange(k)
    colors = [POSITIVE if v[j] >= 0 else NEGATIVE for j in order]
    ax.barh(y, v[order], color=colors, xerr=xerr, error_kw={"ecolor": TOTAL, "capsize": 3, "lw": 1})
    ax.set_yticks(y, [_lit(t) for t in shown])
    ax.invert_yaxis()
    _value_axis(ax, xlabel)
    return fig


@functools.lru_cache(maxsize=4)
def _font(px: int) -> Any:
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"  # shipped with matplotlib
    try:
        return ImageFont.truetype(str(path), px)
    except OSError:
        return ImageFont.load_default(size=px)


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; outside the image counts as inside, so no outline is drawn along the border."""
    p = np.pad(mask, 1, mode="edge")
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _fit_text(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def prototype_strip(
    pictures: Any,
    maps: Any,
    captions: Sequence[str],
    *,
    threshold: float = 0.5,
    dim: float = 0.3,
    contour: bool = True,
    tile: int = 224,
    gap: int = 6,
) -> np.ndarray:
    """One concept's prototypes side by side, each as its ICE heatmap (region bright, rest dimmed).

    Drawn with numpy and Pillow rather than matplotlib: a strip is pixels and a line of text, and this is
    ~50× faster than ``imshow`` + ``contour``, which matters with one strip per concept.

    Parameters
    ----------
    pictures
        ``[n, H, W, 3]`` pictures in [0, 1].
    maps
        ``[n, H, W]`` the concept's map on each picture.
    captions
        ``n`` short captions, written above each picture (shortened with "…" to fit).
    threshold, dim
        As in :func:`heatmap_overlay`.
    contour
        Outline the region (2 px, in the tile's resolution).
    tile
        Side in pixels of each picture's square cell (pictures are resized to fit it).
    gap
        White pixels between the cells.

    Returns
    -------
    np.ndarray
        ``[caption + tile, n·tile + (n−1)·gap, 3]`` uint8 RGB (save it with :func:`save_picture`).
    """
    from PIL import Image, ImageDraw

    pics = _as_array(pictures, "pictures")
    ms = _as_array(maps, "maps")
    if pics.ndim != 4 or pics.shape[-1] != 3 or ms.shape != pics.shape[:3] or pics.shape[0] < 1:
        raise ParameterError(
            f"pictures must be [n,H,W,3] and maps [n,H,W] of the same n ≥ 1, H, W; got {tuple(pics.shape)} "
            f"and {tuple(ms.shape)}"
        )
    n, H, W = ms.shape
    if len(captions) != n:
        raise ParameterError(f"got {len(captions)} captions for {n} pictures")
    if tile < 8:
        raise ParameterError(f"tile must be at least 8 pixels, got {tile}")
    scale = tile / max(H, W)
    th, tw = max(1, round(H * scale)), max(1, round(W * scale))
    font = _font(max(10, tile // 16))
    cap_h = int(font.size * 1.6)
    strip = Image.new("RGB", (n * tile + (n - 1) * gap, cap_h + tile), "white")
    draw = ImageDraw.Draw(strip)
    # upscaling small inputs stays crisp (nearest); shrinking large ones is antialiased
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    for i in range(n):
        ov = heatmap_overlay(pics[i].transpose(2, 0, 1), ms[i], threshold=threshold, dim=dim)
        im = Image.fromarray(np.clip(np.rint(ov * 255), 0, 255).astype(np.uint8), "RGB")
        im = im.resize((tw, th), resample)
        if contour:
            keep = keep_mask(ms[i], threshold)
            k = np.asarray(Image.fromarray(keep).resize((tw, th), Image.Resampling.NEAREST))
            edge = k & ~_erode(_erode(k))
            a = np.array(im)
            a[edge] = _CONTOUR_RGB
            im = Image.fromarray(a, "RGB")
        x0 = i * (tile + gap)
        strip.paste(im, (x0 + (tile - tw) // 2, cap_h + (tile - th) // 2))
        text = _fit_text(draw, str(captions[i]), font, tile - 4)
        draw.text((x0 + tile / 2, cap_h / 2), text, fill=TOTAL, font=font, anchor="mm")
    return np.asarray(strip)


def local_figure(
    contributions: Any,
    labels: Sequence[str],
    *,
    residual: float,
    bias: float,
    logit: float,
    title: str = "",
) -> Figure:
    """How one image's target logit is made: one bar per concept, the residual, the bias, the logit.

    Parameters
    ----------
    contributions
        ``[k]`` concept contributions ``score × weight``, in the order they should be drawn (top first).
    labels
        ``k`` concept names.
    residual, bias, logit
        The other terms; ``Σ contributions + residual + bias = logit``.
    title
        Drawn literally above the bars.

    Returns
    -------
    matplotlib.figure.Figure
    """
    vals, names, colors = local_terms(contributions, labels, residual, bias, logit)
    k = vals.shape[0] - 3
    fig = Figure(figsize=(5.4, 1.2 + 0.36 * (k + 3)))
    value_text = [f"{v:+.3g}".replace("-", "\u2212") for v in vals]
    names = [_lit(t) for t in _fixed_layout(fig, names, value_text, title)]
    ax = fig.add_subplot()
    y = np.arange(k + 3, dtype=np.float64)
    y[k:] += 0.5  # a gap separates the concepts from the other terms
    ax.barh(y, vals, color=colors, height=0.75)
    ax.set_yticks(y, names)
    ax.axvline(0, color=TOTAL, lw=0.8)
    ax.axhline(k - 0.25, color=NEUTRAL, lw=0.6, ls=":")
    lo, hi = float(min(vals.min(), 0.0)), float(max(vals.max(), 0.0))
    pad = 0.04 * (hi - lo if hi > lo else 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(y[-1] + 0.6, y[0] - 0.6)  # top to bottom
    # values as a column of right-hand tick labels: they never overlap a bar or the axis, whatever the signs
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(y, value_text)
    right.tick_params(labelsize=_FONT - 1, length=0)
    right.spines[["top", "right", "left"]].set_visible(False)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # 12 pt tick labels crowd at matplotlib's default
    _xlabel(ax, "contribution to the logit")
    ax.tick_params(labelsize=_FONT)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        _title(ax, title)
    return fig


def local_terms(contributions: Any, labels: Sequence[str], residual: float, bias: float,
                logit: float) -> tuple[np.ndarray, list[str], list[str]]:
    """The rows of a local explanation's chart (:func:`local_figure`, ``report.svg.local_svg``).

    Returns ``(values [k + 3] float64, row names, colours)``: the ``k`` contributions, then the residual, the
    bias and the logit; checked: one contribution per label, numbers, all finite (else a ParameterError).
    """
    c = _labelled(contributions, "contributions", labels, "contributions").astype(np.float64)
    try:
        vals = np.concatenate([c, [float(residual), float(bias), float(logit)]])
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"residual, bias and logit must be numbers, got {residual!r}, {bias!r}, "
                             f"{logit!r}") from exc
    if not np.isfinite(vals).all():
        names = [*map(str, labels), "residual", "bias", "logit"]
        bad = [n for n, ok in zip(names, np.isfinite(vals), strict=True) if not ok]
        raise ParameterError(f"the terms of a local explanation must be finite; NaN or ±inf in "
                             f"{', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}: check the model's output "
                             "on this image (are the images normalised with the model's preset?)")
    colors = [POSITIVE if v >= 0 else NEGATIVE for v in c] + [NEUTRAL, NEUTRAL, TOTAL]
    return vals, [*map(str, labels), "residual", "bias", "logit (sum)"], colors


def _title(ax: Any, text: str) -> None:
    """The axes' left title, starting at the figure's left edge (over the tick labels), shortened to fit."""
    w_pt = float(ax.get_figure().get_size_inches()[0]) * 72
    pos = ax.get_position()
    t = _shorten(text, w_pt - 16)
    ax.set_title(_lit(t), fontsize=_FONT, loc="left", x=(8 / w_pt - pos.x0) / pos.width)


def edit_figure(
    deltas: Any,
    labels: Sequence[str],
    *,
    xlabel: str = "change of the logit when the concept is removed",
) -> Figure:
    """Concept edits: per concept, the mean change of a logit (a bar) and each image's change (dots).

    Parameters
    ----------
    deltas
        ``[n, k]`` change of the logit on each of ``n`` images when each of ``k`` concepts is removed,
        columns in the order to draw them (top first).
    labels
        ``k`` concept names.
    xlabel
        Axis label (drawn literally).

    Returns
    -------
    matplotlib.figure.Figure
    """
    d = _as_array(deltas, "deltas")
    if d.ndim != 2:
        raise ParameterError(f"deltas must be [n images, k concepts], got shape {list(d.shape)}")
    n, k = d.shape
    if len(labels) != k:
        raise ParameterError(f"got {len(labels)} labels for {k} concepts")
    mean = d.mean(0) if n else np.zeros(k)
    fig = Figure(figsize=(5.6, 1.0 + 0.42 * k))
    shown = _fixed_layout(fig, labels)
    ax = fig.add_subplot()
    y = np.arange(k, dtype=np.float64)
    ax.barh(y, mean, color=[POSITIVE if v >= 0 else NEGATIVE for v in mean], height=0.7, alpha=0.85)
    if n:
        # evenly spread within the bar's height (deterministic: no random jitter in a report)
        off = np.linspace(-0.25, 0.25, n) if n > 1 else np.zeros(1)
        ax.scatter(d.reshape(-1), (y[None, :] + off[:, None]).reshape(-1), s=9, color=TOTAL, alpha=0.55,
                   linewidths=0, zorder=3)
    ax.set_yticks(y, [_lit(t) for t in shown])
    ax.set_ylim(k - 0.5, -0.5)  # top to bottom
    _value_axis(ax, xlabel)
    return fig
