"""The report section of minimal masks: photo, mask, and the saliency baselines cut at the same area.

Notation: ``x [N,3,H,W]`` normalised images, ``masks [N,1,H,W]`` the binary minimal masks
(:class:`~conceptlens.attribution.masks.MaskExplanation`), ``saliency [N,1,H,W]`` a baseline map
(occlusion, Grad-CAM; higher = more important), ``pic [H,W,3]`` a picture in [0, 1] for display.

Every baseline is shown binarised at the mask's kept fraction of the same image
(:func:`~conceptlens.metrics.pixels.binarize_at`), so the pictures compare *where* each method puts
the same number of pixels. The numbers under each image are those of the ``comparison`` rows when they are
given (:func:`~conceptlens.workflows.masks.compare_at_equal_area`, or the cheaper
:func:`~conceptlens.workflows.masks.equal_area_rows`), else the mask's own. The section draws; it never runs
the model (:func:`~conceptlens.workflows.masks.measured_mask_section` measures, then calls it).

>>> rows = compare_at_equal_area(model, x, expl.target, expl.masks, {"occlusion": occ, "Grad-CAM": cam})
>>> s = mask_section(expl, x, names=names, baselines={"occlusion": occ, "Grad-CAM": cam}, model=model,
...                  comparison=rows)
>>> cl.report.write(ex, x, "report/", extra_sections=[s])       # or write_page([s], "out/")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlens._check import check_int, fmt, minus
from conceptlens._io import atomic_write, write_csv
from conceptlens.errors import ParameterError
from conceptlens.metrics.pixels import binarize_at
from conceptlens.report import figures
from conceptlens.report.base import Section
from conceptlens.report.table import Column, Table

__all__ = ["mask_overlay", "mask_section", "write_mask_outputs", "write_page", "binarize_baselines",
           "check_section_inputs"]

_GAP = 6  # pixels of white between the panels of a strip
#: The means table of :func:`write_mask_outputs`, one row per method.
_MEAN_COLUMNS = (
    Column("method", "method", kind="str"), Column("kept_fraction", "kept", kind="pct", digits=1),
    Column("top1_kept", "top-1 kept", kind="pct", digits=0), Column("confidence", "confidence"),
    Column("independent_top1", "top-1 kept on new noise", kind="pct", digits=0),
    Column("complement_top1", "complement keeps top-1 ↓", kind="pct", digits=0),
    Column("complement_confidence", "complement confidence ↓"),
    Column("deletion_auc", "deletion AUC ↓"), Column("insertion_auc", "insertion AUC ↑"),
)
_COLS = (("kept_fraction", "kept", "pct"), ("top1_kept", "top-1 kept", "bool"),
         ("confidence", "confidence", "num"), ("independent_top1", "top-1 kept on new noise", "pct"),
         ("complement_top1", "complement keeps top-1 ↓", "bool"),
         ("complement_confidence", "complement confidence ↓", "num"),
         ("deletion_auc", "deletion AUC ↓", "num"), ("insertion_auc", "insertion AUC ↑", "num"))

def mask_overlay(pic: Any, mask: Any, dim: float = 0.25) -> np.ndarray:
    """The kept pixels at full brightness, the removed ones dimmed, the mask's outline in yellow.

    Parameters
    ----------
    pic
        ``[H,W,3]`` picture in [0, 1] (numpy or torch).
    mask
        ``[H,W]`` or ``[1,H,W]`` binary mask (> 0.5 = kept).
    dim
        Brightness factor in [0, 1] of the removed pixels.

    Returns
    -------
    np.ndarray
        ``[H,W,3]`` float32 in [0, 1].
    """
    p = figures._as_array(pic, "pic")
    m = figures._as_array(mask, "mask")
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if p.ndim != 3 or p.shape[2] != 3 or m.shape != p.shape[:2]:
        raise ParameterError(f"pic must be [H,W,3] and mask [H,W] of the same size, got {tuple(p.shape)} and "
                             f"{tuple(m.shape)}")
    if not 0.0 <= dim <= 1.0:
        raise ParameterError(f"dim must be in [0, 1], got {dim!r}")
    keep = m > 0.5
    out = np.where(keep[:, :, None], p, p * np.float32(dim)).astype(np.float32)
    edge = keep & ~figures._erode(keep)
    # a thin line is invisible on a large picture: thicken it with the pixels just outside too
    edge |= ~keep & ~figures._erode(~keep)
    out[edge] = np.asarray(figures._CONTOUR_RGB, dtype=np.float32) / 255.0
    return np.clip(out, 0.0, 1.0)


def _strip(panels: Sequence[np.ndarray]) -> np.ndarray:
    h = panels[0].shape[0]
    gap = np.ones((h, _GAP, 3), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            parts.append(gap)
        parts.append(p)
    return np.concatenate(parts, axis=1)


def _cell(kind: str, v: Any) -> str:
    if kind == "pct":
        return fmt(v, 1, "pct")
    return fmt(v, 3, kind) if kind == "bool" else minus(fmt(v, 3))


def binarize_baselines(
    baselines: Mapping[str, torch.Tensor], frac: torch.Tensor, x: torch.Tensor, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Each baseline ``[N,1,h,w]`` (or ``[N,h,w]``) cut at the kept fractions ``frac [N]``, as shown here.

    The map is binarised at its own resolution (:func:`~conceptlens.metrics.pixels.binarize_at`, ties
    broken by ``seed``), then resized (nearest) to ``x [N,3,H,W]``'s size. Returns ``{name: [N,1,H,W]}``
    in ``x``'s dtype.
    """
    out = {}
    for b, s in baselines.items():
        m = binarize_at((s[:, None] if s.ndim == 3 else s).float(), frac, seed=seed).to(x.dtype)
        if m.shape[-2:] != x.shape[-2:]:
            m = torch.nn.functional.interpolate(m, size=x.shape[-2:], mode="nearest")
        out[b] = m
    return out


def check_section_inputs(
    expl: Any, x: Any, names: Sequence[str] | None, baselines: Mapping[str, Any] | None = None
) -> list[str]:
    """Check the arguments of :func:`mask_section`; returns the ``N`` image names (default ``image i``).

    Raises
    ------
    ParameterError
        When ``expl`` has no ``masks [N,1,H,W]``, ``x`` is not their ``[N,3,H,W]`` images, the names are
        not ``N``, or a baseline is not an ``[N, ...]`` tensor.
    """
    masks = getattr(expl, "masks", None)
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[1] != 1:
        raise ParameterError("expl must be a MaskExplanation with masks [N,1,H,W] (MaskExplainer.explain(x))")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != masks.shape[0] \
            or x.shape[-2:] != masks.shape[-2:]:
        raise ParameterError(f"x must be the [N,3,H,W] images of the masks {list(masks.shape)}, got "
                             f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    n = x.shape[0]
    names = [f"image {i}" for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise ParameterError(f"got {len(names)} names for {n} images")
    for b, s in (baselines or {}).items():
        if not isinstance(s, torch.Tensor) or s.shape[0] != n:
            raise ParameterError(f"baseline {b!r} must be a saliency tensor [N,1,H,W] with N = {n}")
    return names


def mask_section(
    expl: Any,
    x: torch.Tensor,
    names: Sequence[str] | None = None,
    baselines: Mapping[str, torch.Tensor] | None = None,
    *,
    model: torch.nn.Module | None = None,
    comparison: Sequence[Mapping[str, Any]] | None = None,
    preset: Any = None,
    max_images: int = 24,
    title: str = "Minimal masks",
    seed: int = 0,
) -> Section:
    """A report :class:`~conceptlens.report.html.Section`: per image the photo, the mask and the baselines.

    Parameters
    ----------
    expl
        A :class:`~conceptlens.attribution.masks.MaskExplanation` for ``x`` (``masks [N,1,H,W]``,
        ``kept_fraction [N]``, ``same_top1 [N]``, ``confidence [N]``, ``target [N]``).
    x
        ``[N,3,H,W]`` the normalised images the masks explain.
    names
        ``N`` image names for captions (default ``"image 0"``, …).
    baselines
        ``{name: saliency [N,1,H,W]}``, e.g. occlusion and Grad-CAM; each is shown binarised at the mask's
        kept fraction of the same image.
    model
        The classifier: gives the class names and the display preset (``model.preset``); never run here.
    comparison
        Rows of :func:`~conceptlens.workflows.masks.compare_at_equal_area` (or
        :func:`~conceptlens.workflows.masks.equal_area_rows`) on the same images (method names ``"mask"``
        and the keys of ``baselines``): their per-image numbers, AUCs included, fill the tables. Without
        them, only the mask's own numbers (from ``expl``) are shown.
    preset
        Undoes the normalisation for display (default ``model.preset``; None scales each image to [0, 1]).
    max_images
        Show at most this many images (the first ones).
    title
        Section heading.
    seed
        Tie-breaking of the binarisation (as in :func:`~conceptlens.metrics.pixels.binarize_at`).

    Returns
    -------
    Section
        Markup and one PNG strip per image (``img/masks_<i>.png``).
    """
    from markupsafe import escape

    names = check_section_inputs(expl, x, names, baselines)
    masks = expl.masks
    n = x.shape[0]
    check_int("max_images", max_images, 1)
    if preset is None and model is not None:
        preset = getattr(model, "preset", None)
    classes = list(getattr(preset, "classes", None) or [])

    frac = masks.float().mean((1, 2, 3))
    binary = binarize_baselines(dict(baselines or {}), frac, x, seed)

    per: dict[str, dict[str, list[Any]]] = {}
    if comparison is not None:
        for row in comparison:
            per[str(row["method"])] = {k: list(row.get(f"{k}_per_image", [None] * n)) for k, _, _ in _COLS}
    else:
        own = {"top1_kept": expl.same_top1, "confidence": expl.confidence,
               "independent_top1": getattr(expl, "independent_top1", None),
               "complement_top1": getattr(expl, "complement_top1", None),
               "complement_confidence": getattr(expl, "complement_confidence", None)}
        per["mask"] = {k: [None] * n if v is None else v.float().tolist() for k, v in own.items()}
        per["mask"].update(kept_fraction=frac.tolist(), deletion_auc=[None] * n, insertion_auc=[None] * n)

    pics = figures.to_pictures(x[:max_images], preset)
    shown = min(n, max_images)
    methods = ["mask", *binary]
    images: dict[str, Any] = {}
    parts = [
        "<p>Each row: the photo, the minimal mask (kept pixels bright, outlined in yellow), then each "
        "baseline cut at <em>the same number of pixels</em> as the mask. <em>top-1 kept</em>: the model "
        "still predicts the explained class on the kept pixels alone (the rest set to the mean colour); "
        "<em>confidence</em>: its probability there; <em>top-1 kept on new noise</em>: the same on two "
        "noise backgrounds (Gaussian, uniform) the mask was not selected on; <em>complement</em>: the "
        "photo with the kept pixels removed, which should <em>lose</em> the class (necessity); deletion AUC "
        "(lower is better) and insertion AUC "
        "(higher is better) rank the pixels by each method's own map.</p>",
        f"<p>Panels: photo · mask · {' · '.join(str(escape(b)) for b in binary)}</p>" if binary else "",
    ]
    for i in range(shown):
        panels = [pics[i], mask_overlay(pics[i], masks[i, 0])]
        panels += [mask_overlay(pics[i], binary[b][i, 0]) for b in binary]
        fname = f"masks_{i:03d}.png"
        images[fname] = _strip(panels)
        t = int(expl.target[i])
        cname = classes[t] if 0 <= t < len(classes) else f"class {t}"
        rows = []
        for mth in methods:
            if mth not in per:
                continue
            cells = "".join(f"<td>{escape(_cell(kind, per[mth][key][i]))}</td>" for key, _, kind in _COLS)
            rows.append(f"<tr><th>{escape(mth)}</th>{cells}</tr>")
        head = "".join(f"<th>{escape(label)}</th>" for _, label, _ in _COLS)
        alt = f"{names[i]}: photo, minimal mask" + "".join(f", {b} at equal area" for b in binary)
        parts.append(
            f'<figure class="mask-item"><figcaption><strong>{escape(names[i])}</strong> — '
            f"{escape(cname)} (#{t})</figcaption>"
            f'<img src="img/{fname}" alt="{escape(alt)}" style="max-width:100%;height:auto">'
            f'<div class="table-wrap"><table class="mask-table"><tr><th>method</th>{head}</tr>{"".join(rows)}'
            "</table></div></figure>"
        )
    if n > shown:
        parts.append(f"<p>{n - shown} more images not shown.</p>")
    return Section(title=title, html="\n".join(p for p in parts if p), anchor=None, images=images)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em;
       color: #1d232a; }}
table {{ border-collapse: collapse; margin: .4em 0 1.2em; font-variant-numeric: tabular-nums; }}
th, td {{ border-bottom: 1px solid #dde; padding: .2em .6em; text-align: right; }}
th:first-child {{ text-align: left; }}
figure {{ margin: 1.2em 0; }}
figcaption {{ margin-bottom: .3em; }}
img {{ image-rendering: auto; }}
.note {{ color: #555; }}
.table-wrap {{ overflow-x: auto; max-width: 100%; }}
</style></head>
<body>
<h1>{title}</h1>
{intro}
{sections}
</body></html>
"""


def write_page(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    *,
    title: str = "Minimal masks",
    intro_html: str = "",
) -> Path:
    """A small self-contained page (inline CSS, no script, no external URL) made of report sections.

    Parameters
    ----------
    sections
        :class:`~conceptlens.report.html.Section` s, e.g. from :func:`mask_section`.
    out_dir
        Folder for ``index.html``; the sections' images go to ``out_dir/img/``.
    title
        Page title (escaped).
    intro_html
        Trusted markup inserted before the sections (escape user text yourself).

    Returns
    -------
    Path
        ``out_dir/index.html``.
    """
    from markupsafe import escape

    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    body = []
    for s in sections:
        for fname, obj in s.images.items():
            if hasattr(obj, "savefig"):
                figures.save_png(obj, out / "img" / fname)
            else:
                figures.save_picture(obj, out / "img" / fname)
        anchor = escape(s.anchor or "s-" + "".join(c if c.isalnum() else "-" for c in s.title.lower()))
        body.append(f'<section id="{anchor}"><h2>{escape(s.title)}</h2>\n{s.html}\n</section>')
    html = _PAGE.format(title=escape(title), intro=intro_html, sections="\n".join(body))
    return atomic_write(out / "index.html", html)


def _file_stems(names: Sequence[str]) -> list[str]:
    """Safe, unique file stems from image names or paths (``photos/cat.jpg`` → ``cat``)."""
    import re

    used: set[str] = set()
    out = []
    for s in names:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(s)).stem).strip("._") or "image"
        cand, k = stem, 2
        while cand in used:
            cand, k = f"{stem}_{k}", k + 1
        used.add(cand)
        out.append(cand)
    return out


def write_mask_outputs(
    comparison: Any,
    x: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    model: torch.nn.Module | None = None,
    preset: Any = None,
    title: str = "Minimal masks",
) -> dict[str, Any]:
    """Write what ``conceptlens mask`` writes: overlays, a CSV table and a small HTML page.

    Parameters
    ----------
    comparison
        A :class:`~conceptlens.workflows.masks.MaskComparison` of the images ``x``.
    x
        ``[N,3,H,W]`` the normalised images.
    out_dir
        Output folder (created): ``<image>_mask.png`` per image (the mask overlay), ``masks.csv`` (one row
        per image: name, target, kept fraction, top-1 kept, confidence, deletion and insertion AUC, and the
        baselines at equal area) and ``index.html`` (with ``img/``).
    names
        ``N`` image names or paths (the file names of the overlays are made from them).
    model
        The classifier (class names, and the preset for display).
    preset
        Display preset (default ``model.preset``).
    title
        Page title.

    Returns
    -------
    dict
        ``{"overlays": [Path], "csv": Path, "html": Path, "rows": [dict]}``.
    """
    from markupsafe import escape

    e = comparison.explanation
    n = x.shape[0]
    names = [f"image_{i}" for i in range(n)] if names is None else [str(s) for s in names]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if preset is None and model is not None:
        preset = getattr(model, "preset", None)
    classes = list(getattr(preset, "classes", None) or [])
    shown = [Path(s).name for s in names]
    rows = comparison.per_image(shown, classes)
    pics = figures.to_pictures(x, preset)
    overlays = []
    for i, stem in enumerate(_file_stems(names)):
        overlays.append(figures.save_picture(mask_overlay(pics[i], e.masks[i, 0]), out / f"{stem}_mask.png"))
    cells = [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    csv_path = write_csv(out / "masks.csv", list(rows[0]), cells)
    section = mask_section(e, x, names=shown, baselines=comparison.saliencies, model=model,
                           comparison=comparison.rows, preset=preset, max_images=n, title=title)
    mode = "amortised generator (one forward pass)" if comparison.amortised else "per-image optimisation"
    means = Table(_MEAN_COLUMNS, comparison.rows).html(mark_best=False)
    intro = (f"<p class='note'>{n} images, masks by {escape(mode)}; baselines binarised at the mask's kept "
             f"area of each image. Means over the images:</p><div class='table-wrap'>{means}</div>"
             "<p class='note'>Per image: <code>masks.csv</code>.</p>")
    html = write_page([section], out, title=title, intro_html=intro)
    return {"overlays": overlays, "csv": csv_path, "html": html, "rows": rows}
