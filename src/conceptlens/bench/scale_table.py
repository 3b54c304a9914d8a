"""The docs' scale table: ``bench/results/scale.md``, written from ``scale.json`` (:mod:`.scale`).

Its own module so that ``bench summary`` (which rewrites it) needs nothing of the benchmark itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conceptlens._io import atomic_write

__all__ = ["scale_table", "write_table", "TABLE", "DEFAULT_MODEL"]

#: The model of the rows that name none (the benchmark's first layout).
DEFAULT_MODEL = "efficientnet_lite0"
#: Where the docs' scale table lives, next to ``scale.json``.
TABLE = "scale.md"


def _gb(mb: float) -> str:
    return f"{mb / 1000:.2f}"


def scale_table(payload: dict[str, Any]) -> str:
    """The docs' scale table (markdown) from a ``scale.json`` payload: one line per row, in its order."""
    lines = ["| model | method | images | activations | forward pass (s) | pipeline (s) | extract / crops / "
             "fit / encode (s) | pipeline / forward | per forward pass | peak memory (GB) | load |",
             "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in payload.get("rows", []):
        model = str(r.get("model", DEFAULT_MODEL)).removeprefix("timm:")
        stages = " / ".join(f"{float(r[k]):.1f}" for k in ("extract_s", "crops_s", "fit_s", "encode_s"))
        ratio = "–" if r.get("ratio") is None else f"{r['ratio']:.2f}×"
        per_pass = f"{r['ratio_per_pass']:.2f}×" if r.get("forward_passes_per_image", 1) > 1 and \
            r.get("ratio_per_pass") is not None else "–"
        forward = "–" if r.get("forward_s") is None else f"{r['forward_s']:.1f}"
        load = r.get("loadavg") or []
        where = "disk" if r["on_disk"] else "memory"
        lines.append(f"| {model} | {r['method']} | {r['n_images']:,} | {where} | {forward} "
                     f"| {r['total_s']:.1f} | {stages} | {ratio} | {per_pass} "
                     f"| {_gb(r['peak_rss_mb'])} | {f'{load[0]:.1f}' if load else '–'} |")
    return "\n".join(lines) + "\n"


def write_table(out: Path | str = Path("bench/results")) -> Path | None:
    """Write ``out/scale.md`` from ``out/scale.json`` (None when there is no JSON); returns its path."""
    src = Path(out) / "scale.json"
    if not src.is_file():
        return None
    return atomic_write(Path(out) / TABLE, scale_table(json.loads(src.read_text())))
