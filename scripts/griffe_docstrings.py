"""A griffe extension for the API reference: the docstrings are written for Sphinx-style readers, so turn
their reST bits into Markdown as they are loaded (the source files stay as they are).

* roles (``:class:`~conceptlens.X` ``, ``:func:`f` ``, ``:mod:`m` ``, …) become code spans (``X`` for ``~``);
* doctest lines (``>>> …`` and their ``... `` continuations and output) become fenced Python blocks;
* ``.. note::``-style directives become a bold label.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const|ref|term):`(~?)([^`]+)`")


def _role(m: re.Match[str]) -> str:
    target = m.group(2).split("<")[-1].rstrip(">").strip()
    return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"


def markdown(text: str) -> str:
    """``text`` (a docstring) with its reST roles, doctests and directives turned into Markdown."""
    text = ROLE.sub(_role, text)
    text = re.sub(r"^(\s*)\.\. (\w+)::\s*", lambda m: f"{m.group(1)}**{m.group(2).capitalize()}:** ", text,
                  flags=re.M)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                block.append(lines[i][len(indent):])
                i += 1
            out += [f"{indent}```python", *[indent + b for b in block], f"{indent}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class MarkdownDocstrings(griffe.Extension):
    """Rewrite every loaded docstring with :func:`markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
