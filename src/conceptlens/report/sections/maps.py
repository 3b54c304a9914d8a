"""CRAFT's maps section: each concept's upsampled code map next to its implicit-differentiation map.

Notation: ``x [N,3,H,W]`` the report's images, ``k`` concepts, ``j`` a concept's index in the bank; the
maps are ``[n, k, H, W]`` for the first ``n`` images (:func:`conceptlens.attribution.maps.upsample_maps`
and :func:`conceptlens.attribution.implicit.implicit_maps`).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptlens.attribution.implicit import implicit_maps
from conceptlens.report import figures
from conceptlens.report.base import Section

__all__ = ["maps_section"]


def maps_section(
    ex: Any,
    x: torch.Tensor,
    *,
    n_images: int = 3,
    n_concepts: int = 3,
    A: torch.Tensor | None = None,
    names: list[str] | None = None,
    title: str = "Concept maps: upsampled codes and implicit differentiation",
) -> Section:
    """A report :class:`~conceptlens.report.Section` with both kinds of maps side by side.

    For the first ``n_images`` images and the ``n_concepts`` most important concepts, one strip per image:
    for each concept, its upsampled code map next to its implicit-differentiation map (ICE heatmaps: the
    region above half the map's min-max range bright, the rest dimmed).

    Parameters
    ----------
    ex
        A fitted explainer with an NMF-like bank.
    x
        ``[N,3,H,W]`` normalised images.
    n_images, n_concepts
        How many images and concepts to show.
    A
        Precomputed ``g(x)``.
    names
        Image names for the captions.
    """
    from markupsafe import escape

    n = min(int(n_images), x.shape[0])
    k = ex.concepts_.shape[0]
    top = [int(j) for j in torch.argsort(-ex.importance_.detach().cpu(), stable=True)[: min(n_concepts, k)]]
    xs = x[:n]
    As = ex.activations(xs) if A is None else A[:n]
    up = ex.explain(xs, A=As, maps="upsample").maps.detach().cpu()
    imp = implicit_maps(ex.split, ex.decomposition_, xs, A=As).cpu()
    pics = figures.to_pictures(xs, getattr(ex.split, "preset", None))
    names = names or [f"image {i}" for i in range(n)]
    images: dict[str, Any] = {}
    parts = [
        "<p>For each image, every concept is shown twice: its <b>upsampled</b> code map (the peers' concept "
        "map) and its <b>implicit</b> map, a Grad-CAM of the concept score at the layer through the exact "
        "derivative of the non-negative least-squares codes (CRAFT's concept attribution map). Regions above "
        "half the map's maximum are bright.</p>"
    ]
    for i in range(n):
        maps_i = torch.stack([m for j in top for m in (up[i, j], imp[i, j])]).numpy()
        caps = [f"c{j} {kind}" for j in top for kind in ("upsampled", "implicit")]
        strip = figures.prototype_strip(pics[[i] * len(caps)], maps_i, caps, tile=160, gap=4)
        fname = f"maps_{i:03d}.png"
        images[fname] = strip
        parts.append(f"<h3>{escape(names[i])}</h3><img src=\"img/{fname}\" alt=\"upsampled and implicit maps "
                     f"of concepts {', '.join(map(str, top))} on {escape(names[i])}\" "
                     "style=\"max-width:100%;height:auto\">")
    return Section(title=title, html="".join(parts), images=images)
