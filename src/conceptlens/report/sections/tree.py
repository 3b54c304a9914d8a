"""CRAFT's concept tree as a report section: a nested list, each node with its top crops.

Notation: the tree of :mod:`conceptlens.recursive` (:class:`~conceptlens.recursive.ConceptNode`); a node's
``path`` is the tuple of child indices from the root ("concept 2.0" is the first sub-concept of concept 2);
its ``prototypes [p, t, t', 3]`` are uint8 pictures stored in the tree, so the section needs no image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conceptlens.recursive import ConceptNode
from conceptlens.report import figures
from conceptlens.report.base import Section

__all__ = ["tree_section"]


def tree_section(root: ConceptNode, *, title: str = "Concept tree") -> Section:
    """A report :class:`~conceptlens.report.Section`: the tree as a nested list with prototype strips.

    Every node shows its layer, importance, ambiguity and its top crops (the pictures stored in the tree).
    """
    from markupsafe import escape

    images: dict[str, Any] = {}

    def strip(path: tuple[int, ...], n: ConceptNode) -> str:
        if n.prototypes.numel() == 0:
            return ""
        pics = n.prototypes.numpy().astype(np.float32) / 255.0
        caps = [f"crop {int(c)}" for c in n.crop_ids[: pics.shape[0]]]
        pic = figures.prototype_strip(pics, np.ones(pics.shape[:3], dtype=np.float32), caps, contour=False,
                                      tile=96, gap=4)
        name = "tree_" + "_".join(map(str, path)) + ".png"
        images[name] = pic
        alt = f"top crops of concept {'.'.join(map(str, path))}"
        return f'<div><img src="img/{name}" alt="{escape(alt)}" style="max-width:100%;height:auto"></div>'

    def item(path: tuple[int, ...], n: ConceptNode) -> str:
        label = "concept " + ".".join(map(str, path))
        head = (f"<b>{escape(label)}</b> · layer <code>{escape(n.layer)}</code> · importance "
                f"{n.importance:.3g} · ambiguity {n.ambiguity:.2f}")
        if n.children:
            head += (f" · <i>split into {len(n.children)} sub-concepts at "
                     f"<code>{escape(str(n.child_layer))}</code> "
                     f"(importance: {escape(n.importance_method)})</i>")
        kids = "".join(item(path + (i,), c) for i, c in enumerate(n.children))
        return f"<li>{head}{strip(path, n)}" + (f"<ul>{kids}</ul>" if kids else "") + "</li>"

    order = sorted(range(len(root.children)), key=lambda i: -root.children[i].importance)
    body = "".join(item((i,), root.children[i]) for i in order)
    split_count = sum(1 for p, n in root.walk() if p and n.children)
    intro = (f"<p>Concepts at <code>{escape(root.layer)}</code>, most important first. A concept is split "
             "into sub-concepts at an earlier layer when the model's classes on its top crops are mixed "
             f"(normalised entropy ≥ the threshold); {split_count} concept(s) were split. Each row shows the "
             "node's top crops.</p>")
    return Section(title=title, html=intro + f"<ul>{body}</ul>", images=images)
