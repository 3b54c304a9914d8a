"""The docs site builds with --strict, its numbers come from bench/results, and its API reference shows
every public name (scripts/docs_hooks.py does the generating and the checking; this runs it)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _hooks():
    return _script("docs_hooks")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


def test_the_site_builds_strict_with_every_page(site: Path) -> None:
    for page in ["index.html", "concepts/index.html", "trust/index.html", "benchmarks/index.html",
                 "cli/index.html", "faq/index.html", "your-model/index.html", "api/index.html",
                 *[f"methods/{m}/index.html" for m in ("ice", "craft", "face", "eddp", "masks")]]:
        assert (site / page).is_file(), page
    for html in site.rglob("*.html"):
        assert "{{" not in html.read_text(encoding="utf-8"), f"unexpanded macro in {html}"


def test_numbers_come_from_bench_results(site: Path) -> None:
    demo = (ROOT / "bench" / "results" / "demo.md").read_text(encoding="utf-8")
    ice_row = next(line for line in demo.splitlines() if line.startswith("| ICE |"))
    first_number = ice_row.split("|")[2].strip()                     # ICE's Fid_c, as make demo wrote it
    trust = (site / "trust" / "index.html").read_text(encoding="utf-8")
    assert first_number.replace("**", "") in trust
    ice_page = (site / "methods" / "ice" / "index.html").read_text(encoding="utf-8")
    assert "<td>EDDP</td>" not in ice_page and "<td>ICE</td>" in ice_page   # only the method's own rows


def test_cli_reference_is_generated_from_the_app(site: Path) -> None:
    import typer.main

    from conceptlens.cli import app

    page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    commands = list(typer.main.get_command(app).commands)
    assert len(commands) >= 8
    for name in commands:
        assert f"conceptlens {name}" in page and f"Usage: conceptlens {name}" in page
    assert "--version" in page


def test_every_public_name_is_in_the_api_reference(site: Path) -> None:
    hooks = _hooks()
    assert hooks.missing_names(site) == []
    modules = hooks.api_modules()
    assert {"conceptlens", "conceptlens.decompose", "conceptlens.metrics", "conceptlens.io"} <= set(modules)
    api = (site / "api").rglob("*.html")
    ids = "".join(p.read_text(encoding="utf-8") for p in api)
    assert 'id="conceptlens.explainer.ConceptExplainer"' in ids
    assert 'id="conceptlens.decompose.nmf.NMF"' in ids


def test_a_name_without_an_anchor_is_reported(site: Path, tmp_path: Path) -> None:
    """The check can fail: remove NMF's section from a copy of the site and it is named."""
    import shutil

    copy = tmp_path / "site"
    shutil.copytree(site / "api", copy / "api")
    page = copy / "api" / "decompose" / "index.html"
    page.write_text(page.read_text(encoding="utf-8").replace('id="conceptlens.decompose.nmf.NMF"', 'id="x"'),
                    encoding="utf-8")
    assert "conceptlens.decompose.NMF" in _hooks().missing_names(copy)


def test_macros_fail_loudly() -> None:
    from mkdocs.exceptions import PluginError

    hooks = _hooks()
    assert hooks.expand('{{ rows "bench/results/demo.md" "ICE" }}').count("\n") == 2   # header, rule, row
    assert hooks.expand('{{ value "bench/results/nmf.json" "rows.0.k" "03d" }}') == "010"
    with pytest.raises(PluginError, match="no number"):
        hooks.expand('{{ value "bench/results/nmf.json" "rows.99.k" }}')
    with pytest.raises(PluginError, match="no row"):
        hooks.expand('{{ rows "bench/results/demo.md" "no such method" }}')
    with pytest.raises(PluginError, match="make bench"):
        hooks.expand('{{ include "bench/results/missing.md" }}')
    with pytest.raises(PluginError, match="unknown macro"):
        hooks.expand("{{ nothing }}")


def test_docstrings_are_turned_into_markdown() -> None:
    markdown = _script("griffe_docstrings").markdown
    text = "See :class:`~conceptlens.explainer.ConceptExplainer`, :func:`f`.\n\n>>> a = 1\n>>> a\n1\n\nEnd."
    assert markdown(text) == "See `ConceptExplainer`, `f`.\n\n```python\n>>> a = 1\n>>> a\n1\n```\n\nEnd."


@pytest.mark.slow
def test_docs_figures_script_writes_the_pictures_the_page_shows(tmp_path: Path) -> None:
    written = _script("docs_figures").main(tmp_path)
    names = {p.name for p in written}
    page = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"\(img/([\w.]+\.png)\)", page))
    assert shown and shown <= names                                  # every picture the page shows is made
    assert all((ROOT / "docs" / "img" / n).is_file() for n in shown)   # and committed
    from PIL import Image

    assert all(Image.open(p).width <= 900 for p in written)
