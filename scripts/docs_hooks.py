"""mkdocs hooks: everything in the docs that a command produces is generated when the site is built.

Nothing measured is typed into ``docs/``: the pages hold *macros* that this hook expands from the files that
``make demo`` and ``make bench`` write (``bench/results/*.md`` / ``*.json``), and the reference pages are
written here from the code itself:

``{{ include "bench/results/face.md" }}``
    the file's text (its headings one level down, so that they sit under the page's own).
``{{ code "examples/quickstart.py" "python" }}``
    the file verbatim in a fenced block.
``{{ rows "bench/results/demo.md" "ICE|PCA" }}``
    of every table in the file that has rows whose first cell matches the regular expression (whole cell,
    ``**`` ignored), the header and those rows. No matching row is an error: a renamed method must not
    leave a page with an empty table.
``{{ value "bench/results/nmf.json" "encode.speedup" ".1f" }}``
    one number of a JSON file (dotted path; list items by index), formatted.
``{{ fidelity_table }}``, ``{{ nmf_table }}``
    the tables of ``conceptlens bench fidelity`` / ``bench nmf``, read from their JSON.
``{{ cli }}``
    the ``--help`` of every command of the typer app, as the terminal prints it.
``{{ api_index }}``
    the table of the API reference's pages.

The API reference has one generated page per subpackage (and per top-level module that has an ``__all__``)
found in ``src/conceptlens``, each rendered by mkdocstrings, so that a module added later gets its page
without an edit here. After the build, :func:`on_post_build` checks that every name of ``conceptlens.__all__``
and of each documented module's ``__all__`` has an anchor in the API pages (or, for a module, a page of its
own), and fails the build when one is missing.

The images of ``bench/results/`` (written by ``make demo`` / ``make bench``) are served under ``results/``.
"""

from __future__ import annotations

import html
import importlib
import json
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "conceptlens"
RESULTS = ROOT / "bench" / "results"
MACRO = re.compile(r"\{\{\s*(\w+)((?:\s+\"[^\"]*\")*)\s*\}\}")
ARG = re.compile(r"\"([^\"]*)\"")
API_DIR = "api"
#: Top-level modules documented on their own page (when they define ``__all__``); the rest are internal.
TOP_MODULES = ("errors", "explainer", "edit", "persistence", "recursive")


def _read(rel: str) -> str:
    path = ROOT / rel
    if not path.is_file():
        raise PluginError(f"docs: {rel} is missing; run `make demo` (bench/results/demo.md) or "
                          f"`make bench` (the other bench/results files) first")
    return path.read_text(encoding="utf-8")


def _include(rel: str) -> str:
    return re.sub(r"^(#{1,5}) ", r"#\1 ", _read(rel), flags=re.M)


def _code(rel: str, lang: str = "") -> str:
    return f"```{lang}\n{_read(rel).rstrip()}\n```"


def _tables(text: str) -> list[list[str]]:
    """The markdown tables of ``text``, each as its list of lines (header, rule, rows)."""
    tables, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    return [t for t in tables if len(t) >= 2 and set(t[1].replace("|", "").strip()) <= set("-: ")]


def _rows(rel: str, pattern: str) -> str:
    rx = re.compile(pattern)
    out = []
    for table in _tables(_read(rel)):
        keep = [r for r in table[2:] if rx.fullmatch(r.strip("|").split("|")[0].strip().strip("*"))]
        if keep:
            out.append("\n".join(table[:2] + keep))
    if not out:
        raise PluginError(f"docs: no row of {rel} starts with a cell matching {pattern!r}")
    return "\n\n".join(out)


def _json(rel: str) -> Any:
    return json.loads(_read(rel))


def _dig(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    return obj


def _value(rel: str, dotted: str, fmt: str = "") -> str:
    try:
        return format(_dig(_json(rel), dotted), fmt)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise PluginError(f"docs: {rel} has no number at {dotted!r} ({exc!r})") from exc


def _fidelity_table() -> str:
    d = _json("bench/results/fidelity.json")
    lines = [f"EfficientNet-Lite0, layer `{d['layer']}`, {d['n_images']} images, target class {d['target']} "
             f"(from `bench/results/fidelity.json`).", "",
             "| method | k | fid_c ↑ | fid_r ↓ | rel. reconstruction error ↓ | sparsity | fit s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['k']} | {r['fid_c']:.3f} | {r['fid_r']:.3f} | "
              f"{r['reconstruction_error']:.3f} | {r['sparsity']:.2f} | {r['fit_s']:.2f} |"
              for r in d["rows"]]
    return "\n".join(lines)


def _nmf_table() -> str:
    d = _json("bench/results/nmf.json")
    lines = ["| matrix (n × C) | k | cd ÷ ours, defaults | error cd → ours | "
             "cd ÷ ours, to within 1 % of cd | mu ÷ ours | iterations cd / ours |",
             "|---|---|---|---|---|---|---|"]

    def row(r: dict[str, Any], note: str = "") -> str:
        mu = r.get("speedup_default_vs_mu")
        kind = "real" if r.get("sparse_products") else "planted"
        return (f"| {kind}{note} ({r['n']:,} × {r['C']:,}) | {r['k']} | {r['speedup_default_vs_cd']:.1f}× | "
                f"{r['sklearn_cd']['err']:.4f} → {r['ours_default']['err']:.4f} | "
                f"{r['speedup_to_1pct_vs_cd']:.1f}× | {'–' if mu is None else f'{mu:.1f}×'} | "
                f"{r['sklearn_cd']['iters']} / {r['ours_default']['iters']} |")

    lines += [row(r) for r in d["rows"]]
    two = d.get("two_threads") or {}
    if two.get("fit"):
        lines.append(row(two["fit"], f", {two['threads']} threads each"))
    enc = d["encode"]
    lines += ["", f"Encoding {enc['rows']:,} rows with the bank frozen (k = {enc['k']}): "
              f"{enc['speedup']:.1f}× faster than scikit-learn's `transform`, error {enc['ours_err']:.9f} "
              f"against {enc['sklearn_err']:.9f}. Threads: {d['threads_used']} each unless said; "
              f"{d['reps']} interleaved rounds; measured with conceptlens {d['env']['conceptlens']}, "
              f"torch {d['env']['torch']}."]
    return "\n".join(lines)


def _cli() -> str:
    import typer.main
    from typer.testing import CliRunner

    from conceptlens.cli import app

    group = typer.main.get_command(app)
    env = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}  # the width of the page's code column
    parts = []
    for name in [None, *group.commands]:  # type: ignore[attr-defined]
        args = ["--help"] if name is None else [name, "--help"]
        res = CliRunner().invoke(app, args, env=env, terminal_width=80, prog_name="conceptlens")
        if res.exit_code != 0:
            raise PluginError(f"docs: `conceptlens {' '.join(args)}` exited with {res.exit_code}")
        text = "\n".join(line.rstrip() for line in res.output.strip("\n").splitlines())
        parts.append(f"## `conceptlens{'' if name is None else ' ' + name}`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- API pages
def _is_module(obj: object) -> bool:
    return type(obj).__name__ == "module"


def _target(mod: str, name: str) -> tuple[str, object]:
    """Where ``mod.name`` is documented: a class or function at its definition (lazy re-exports that static
    analysis cannot follow are found so), anything else as ``mod.name``; and the object itself."""
    obj = getattr(importlib.import_module(mod), name)
    if _is_module(obj):
        return obj.__name__, obj
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}", obj
    return f"{mod}.{name}", obj


def api_modules() -> list[str]:
    """Every documented module: ``conceptlens``, its subpackages, the top-level modules with ``__all__``, and
    every module named in a documented module's ``__all__`` (``cl.models``, ``importance.sobol``, …)."""
    mods = ["conceptlens"]
    mods += [f"conceptlens.{p.name}" for p in sorted(SRC.iterdir())
             if p.is_dir() and not p.name.startswith("_") and (p / "__init__.py").is_file()]
    mods += [f"conceptlens.{m}" for m in TOP_MODULES
             if (SRC / f"{m}.py").is_file() and "__all__" in (SRC / f"{m}.py").read_text(encoding="utf-8")]
    i = 0
    while i < len(mods):
        for name in getattr(importlib.import_module(mods[i]), "__all__", []):
            where, obj = _target(mods[i], name)
            if _is_module(obj) and where not in mods:
                mods.append(where)
        i += 1
    return mods


def _page(mod: str) -> str:
    return f"{API_DIR}/{'index' if mod == 'conceptlens' else mod.split('.', 1)[1]}.md"


def _link(mod: str) -> str:
    return f"[`{mod}`]({_page(mod).split('/', 1)[1]})"


def _api_markdown(mod: str) -> str:
    names = getattr(importlib.import_module(mod), "__all__", None)
    title = "`conceptlens`: the public API" if mod == "conceptlens" else f"`{mod}`"
    if names is None:  # a package without __all__: its public submodules, in one page
        return f"# {title}\n\n::: {mod}\n    options:\n      show_submodules: true\n"
    lines = [f"# {title}", "", f"::: {mod}", "    options:", "      members: false", ""]
    subs = [(n, _target(mod, n)[0]) for n in names if _is_module(_target(mod, n)[1])]
    if subs:
        lines += ["| name | module |", "|---|---|"] + [f"| `{n}` | {_link(m)} |" for n, m in subs] + [""]
    documented = api_modules()
    here, elsewhere = [], []
    for name in names:
        where, obj = _target(mod, name)
        if not _is_module(obj):
            (here if _home(where, documented) == mod else elsewhere).append((name, where))
    if elsewhere:  # each object is rendered once, on the page of the module that defines it
        lines += ["Documented with the module that defines them:", "",
                  "| name | documented as |", "|---|---|"]
        lines += [f"| `{mod}.{n}` | [`{w}`][{w}] |" for n, w in elsewhere] + [""]
    for _, where in here:
        lines += [f"::: {where}", "    options:", "      show_root_heading: true",
                  "      show_root_full_path: false", ""]
    if mod == "conceptlens":
        lines += ["## Every module", "", "{{ api_index }}", ""]
    return "\n".join(lines)


def _home(where: str, documented: list[str]) -> str:
    """The documented module whose page shows ``where``: of the modules that export it in their ``__all__``,
    the longest one that contains it, else the first one."""
    exporters = [m for m in documented if any(
        _target(m, n)[0] == where for n in getattr(importlib.import_module(m), "__all__", []))]
    inside = [m for m in exporters if where.startswith(m + ".")]
    return max(inside, key=len) if inside else exporters[0]


def _api_index() -> str:
    lines = ["| module | what it holds |", "|---|---|"]
    for mod in api_modules():
        doc = (importlib.import_module(mod).__doc__ or "").strip()
        first = doc.split("\n\n")[0].replace("\n", " ").replace("|", "/")
        lines.append(f"| {_link(mod)} | {first} |")
    return "\n".join(lines)


MACROS = {"include": _include, "code": _code, "rows": _rows, "value": _value,
          "fidelity_table": _fidelity_table, "nmf_table": _nmf_table, "cli": _cli, "api_index": _api_index}


def expand(markdown: str) -> str:
    """Replace every macro of ``markdown`` by its text (see the module docstring)."""
    def sub(m: re.Match[str]) -> str:
        name, args = m.group(1), ARG.findall(m.group(2))
        if name not in MACROS:
            raise PluginError(f"docs: unknown macro {name!r}; known: {', '.join(MACROS)}")
        return MACROS[name](*args)

    return MACRO.sub(sub, markdown)


# ------------------------------------------------------------------------------------------------ hooks
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    api = [{(m if m == "conceptlens" else m.split(".", 1)[1]): _page(m)} for m in api_modules()]
    for i, entry in enumerate(config.nav or []):
        if isinstance(entry, dict) and "API reference" in entry:
            config.nav[i] = {"API reference": api}
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for mod in api_modules():
        files.append(File.generated(config, _page(mod), content=_api_markdown(mod)))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return expand(markdown)


def missing_names(site_dir: str | Path) -> list[str]:
    """Public names (``__all__`` of every documented module) that the built API pages under ``site_dir``
    do not show: no anchor where :func:`_target` documents them, or (for a class, a function or a module)
    no docstring. A module counts when it has a page of its own."""
    ids: set[str] = set()
    for page in Path(site_dir, API_DIR).rglob("*.html"):
        ids |= {html.unescape(i) for i in re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8"))}
    documented = api_modules()
    missing = []
    for mod in documented:
        for name in getattr(importlib.import_module(mod), "__all__", []):
            where, obj = _target(mod, name)
            shown = where in documented if _is_module(obj) else where in ids
            needs_doc = _is_module(obj) or isinstance(obj, type) or callable(obj)
            if not shown or needs_doc and not (getattr(obj, "__doc__", None) or "").strip():
                missing.append(f"{mod}.{name}")
    return sorted(missing)


def on_post_build(config: MkDocsConfig) -> None:
    missing = missing_names(config.site_dir)
    if missing:
        raise PluginError("docs: public names missing from the API reference (give each a docstring and "
                          "check it is in its module's __all__): " + ", ".join(missing))
