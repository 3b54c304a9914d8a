"""One place for every ratio: the headline of each benchmark's JSON as one markdown table.

``conceptlens bench all`` (``make bench``) ends by writing ``bench/results/summary.md`` from the JSON files
in the folder, whichever are there; ``conceptlens bench summary`` rewrites it alone. A row is one headline
number of one benchmark, measured against its peer in the same run: what, the value, the target where the
issue set one (and whether it is met), and the machine's load average (1 minute) and thread count when
that benchmark ran. A benchmark states its headlines itself under ``"headline"`` (a list of ``{"what",
"value", "target", "met"}``); :data:`EXTRACTORS` reads them out of the older JSON layouts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conceptlens._io import atomic_write, splice

__all__ = ["headlines", "summary_table", "write_summary", "EXTRACTORS", "README_MARKERS", "SCALE_MARKERS"]

#: The lines between which the README holds the summary (``make bench`` splices it, a test compares).
README_MARKERS = ("<!-- bench-summary: written by `make bench` (bench/results/summary.md); do not edit -->",
                  "<!-- end bench-summary -->")
#: The lines between which the README holds the scale table (``bench/results/scale.md``).
SCALE_MARKERS = ("<!-- scale-table: written by `conceptlens bench summary` (bench/results/scale.md); do not "
                 "edit -->", "<!-- end scale-table -->")

Headline = dict[str, Any]


def _h(what: str, value: str, target: str = "", met: bool | None = None) -> Headline:
    return {"what": what, "value": value, "target": target, "met": met}


def _x(v: float) -> str:
    return f"{v:.2f}×" if v < 10 else f"{v:.1f}×"


def _load(d: dict[str, Any]) -> float | None:
    """The 1-minute load average a result records (``env.loadavg``, or the older per-benchmark fields)."""
    for v in ((d.get("env") or {}).get("loadavg"), (d.get("load_average") or {}).get("before"),
              (d.get("config") or {}).get("load_average")):
        if isinstance(v, list) and v:
            return float(v[0])
    return None


def _nmf(d: dict[str, Any]) -> list[Headline]:
    out = []
    for r in d.get("rows", []):
        if r.get("k") == 25 and r.get("density", 1.0) < 0.5 and "speedup_to_1pct_vs_cd" in r:
            out.append(_h("NMF k=25 on real activations: time to 1 % of scikit-learn cd's error, cd / ours",
                          _x(r["speedup_to_1pct_vs_cd"])))
            out.append(_h("NMF k=25 default fit, cd / ours", _x(r["speedup_default_vs_cd"])))
            break
    enc = d.get("encode")
    if enc and "speedup" in enc:
        out.append(_h(f"NMF encode of {enc['rows']:,} rows, scikit-learn transform / ours",
                      _x(enc["speedup"]), "≥ 10×", enc["speedup"] >= 10.0))
    # the same encode with two threads each ("on the same 2 cores", the setting #24 quotes its 10.5× in)
    enc2 = (d.get("two_threads") or {}).get("encode")
    if enc2 and "speedup" in enc2:
        what = f"NMF encode of {enc2['rows']:,} rows, two threads each: scikit-learn transform / ours"
        out.append({**_h(what, _x(enc2["speedup"]), "≥ 10×", enc2["speedup"] >= 10.0), "threads": 2})
    if "threads_used" in d:  # the rows above ran with this many threads (the JSON's env has the machine's)
        out = [{"threads": d["threads_used"], **h} for h in out]
    return out


def _masks(d: dict[str, Any]) -> list[Headline]:
    out = []
    for r in d.get("rows", [])[:1]:
        s = r["seconds_per_image"]
        out.append(_h("masks before the necessity term: seconds per image (2 cores)", f"{s:.1f} s", "≤ 5 s",
                      s <= 5.0))
        out.append(_h("masks before the necessity term: kept area, class kept",
                      f"{100 * r['kept_fraction']:.1f} %, {100 * r['top1_kept']:.0f} %", "≤ 3 %, 100 %",
                      r["kept_fraction"] <= 0.03 and r["top1_kept"] >= 1.0))
    return out


def _masks_necessity(d: dict[str, Any]) -> list[Headline]:
    s, kept = d["seconds_per_image_wall"], d["kept_mean"]
    return [_h("masks, former default (#20: necessity, both paths): seconds per image (2 cores)",
               f"{s:.1f} s",
               "≤ 5 s", s <= 5.0),
            _h("masks, former default (#20): kept area, class kept, complement keeps the class",
               f"{100 * kept:.1f} %, {d['top1_kept']}, {d['complement_keeps_top1']}", "≤ 3 %, 13/13, –",
               kept <= 0.03 and d["top1_kept"] == "13/13")]


def _face(d: dict[str, Any]) -> list[Headline]:
    out = []
    for key in ("lite0", "world"):
        claim = (d.get(key) or {}).get("claim")
        if claim and "holds_at" in claim:
            held = claim["holds_at"]
            out.append(_h(f"FACE's claim ({key}): λ values where it holds",
                          ", ".join(map(str, held)) if held else "none"))
    return out


def _groundtruth(d: dict[str, Any]) -> list[Headline]:
    rows = [r for r in d.get("rows", []) if r.get("kind") not in ("reference",) and r.get("iou") is not None]
    if not rows:
        return []
    best = max(rows, key=lambda r: r["iou"])
    return [_h("ground-truth world: best concept IoU (method)", f"{best['iou']:.3f} ({best['method']})")]


def _fidelity(d: dict[str, Any]) -> list[Headline]:
    rows = [r for r in d.get("rows", []) if r.get("k") == 10]
    if not rows:
        return []
    best = max(rows, key=lambda r: r["fid_c"])
    return [_h("ICE fid_c at k=10 (best reducer)", f"{100 * best['fid_c']:.0f} % ({best['method']})")]


def _eddp(d: dict[str, Any]) -> list[Headline]:
    rows = [r for r in d.get("rows", []) if "eddp" in r and "eddp_legacy" in r]
    if not rows:
        return []
    wins = sum(r["eddp"]["iou"] >= r["eddp_legacy"]["iou"] for r in rows)
    worst = min(rows, key=lambda r: r["eddp"]["iou"])
    return [_h(f"EDDP planted settings: paper default ≥ legacy decoding IoU (of {len(rows)})", str(wins)),
            _h("EDDP worst planted setting: decoding IoU, default / always-on baseline",
               f"{worst['eddp']['iou']:.2f} / {worst.get('always_on', {}).get('iou', float('nan')):.2f}")]


def _scale(d: dict[str, Any]) -> list[Headline]:
    out = []
    for r in d.get("rows", []):
        model = str(r.get("model", "efficientnet_lite0")).removeprefix("timm:")
        peak = r.get("peak_rss_mb", 0) / 1000
        own = {k: v for k, v in (("load", (r.get("loadavg") or [None])[0]), ("threads", r.get("threads")))
               if v is not None}  # each row ran in its own process, at its own time
        if r.get("n_images") == 1000 and "ratio" in r:
            where = "store" if r.get("on_disk") else "memory"
            per_pass = r.get("forward_passes_per_image", 1) > 1  # CRAFT: 1 + crops passes by design
            ratio = r["ratio_per_pass"] if per_pass else r["ratio"]
            out.append(_h(f"{model} {r['method']} on 1,000 images: pipeline / bare forward pass"
                          f"{' per pass it makes' if per_pass else ''} ({where}, peak {peak:.2f} GB)",
                          f"{ratio:.2f}×", "≤ 1.5×", ratio <= 1.5) | own)
        elif r.get("n_images", 0) >= 10000:
            out.append(_h(f"{model} {r['method']} on {r['n_images']:,} images: peak memory", f"{peak:.2f} GB",
                          "≤ 2 GB", peak <= 2.0) | own)
    return out


#: Benchmark name → headlines read from its JSON (for benchmarks that do not write ``"headline"``).
EXTRACTORS: dict[str, Callable[[dict[str, Any]], list[Headline]]] = {
    "nmf": _nmf, "masks": _masks, "face": _face, "groundtruth": _groundtruth, "fidelity": _fidelity,
    "eddp": _eddp, "scale": _scale, "masks_necessity": _masks_necessity,
}


def headlines(folder: Path | str) -> list[dict[str, Any]]:
    """Every benchmark's headline rows from ``folder/*.json`` (benchmark order: by file name).

    Returns
    -------
    list[dict]
        ``{"benchmark", "what", "value", "target", "met", "load", "threads"}``; a JSON that cannot be
        read gives one row saying so instead of failing the whole summary.
    """
    rows: list[dict[str, Any]] = []
    for p in sorted(Path(folder).glob("*.json")):
        name = p.stem
        try:
            d = json.loads(p.read_text())
            hs = d.get("headline") or EXTRACTORS.get(d.get("benchmark", name), lambda _d: [])(d)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            hs = [_h("(unreadable)", type(exc).__name__)]
            d = {}
        env = d.get("env", {}) if isinstance(d, dict) else {}
        load = _load(d) if isinstance(d, dict) else None
        for h in hs:
            # a headline may carry its own load / threads (a benchmark whose rows ran apart)
            rows.append({"benchmark": name, "load": load, "threads": env.get("threads"), **h})
    return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The headline rows as a markdown table (``met``: ✓ / ✗, blank where no target was set)."""
    lines = ["| benchmark | headline | measured | target | met | load (1 min) | threads |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "" if r["met"] is None else ("✓" if r["met"] else "✗")
        load = "–" if r["load"] is None or not math.isfinite(r["load"]) else f"{r['load']:.1f}"
        threads = "–" if r["threads"] is None else r["threads"]
        lines.append(f"| {r['benchmark']} | {r['what']} | {r['value']} | {r['target'] or '–'} | {met} "
                     f"| {load} | {threads} |")
    return "\n".join(lines) + "\n"


def write_summary(folder: Path | str = Path("bench/results"), readme: Path | str | None = None) -> Path:
    """Write ``folder/summary.md`` (and ``scale.md``, the docs' scale table) from the JSON results in
    ``folder``, and splice both into ``readme`` between :data:`README_MARKERS` / :data:`SCALE_MARKERS`
    when it is a file that holds them; returns the summary's path."""
    from conceptlens.bench.scale_table import write_table

    scale = write_table(folder)  # the docs' scale table, from the same folder's scale.json
    table = summary_table(headlines(folder))
    print(table)
    path = atomic_write(Path(folder) / "summary.md", table)
    text = Path(readme).read_text(encoding="utf-8") if readme is not None and Path(readme).is_file() else ""
    if README_MARKERS[0] in text:
        splice(readme, README_MARKERS, table)  # type: ignore[arg-type]
    if scale is not None and SCALE_MARKERS[0] in text:
        splice(readme, SCALE_MARKERS, scale.read_text(encoding="utf-8"))  # type: ignore[arg-type]
    return path
