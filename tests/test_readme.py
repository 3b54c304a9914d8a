"""The README's numbers are written by commands (the demo table block equals what `make demo` wrote), it stays
short, its links resolve, its CLI lines name real commands and options, and its Python example runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conceptlens.bench.summary import README_MARKERS as SUMMARY_MARKERS
from conceptlens.bench.summary import SCALE_MARKERS, write_summary
from conceptlens.workflows.compare import CompareResult, markdown_table
from conceptlens.workflows.demo import README_MARKERS, splice_readme

ROOT = Path(__file__).resolve().parents[1]
#: Every block of the README that a command writes, and the file it equals.
BLOCKS = {README_MARKERS: "demo.md", SUMMARY_MARKERS: "summary.md", SCALE_MARKERS: "scale.md"}


def _block(text: str, markers: tuple[str, str] = README_MARKERS) -> str:
    start, end = markers
    i, j = text.index(start), text.index(end)
    return text[i + len(start) + 1 : j]


def _outside_blocks(text: str) -> str:
    for start, end in BLOCKS:
        text = text[: text.index(start)] + text[text.index(end):]
    return text


def test_the_readme_shows_the_benchmark_and_scale_tables_as_written() -> None:
    text = (ROOT / "README.md").read_text()
    for markers, name in BLOCKS.items():
        assert _block(text, markers) == (ROOT / "bench" / "results" / name).read_text(), name


def test_bench_summary_splices_its_tables_into_a_readme(tmp_path) -> None:
    import shutil

    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results, ignore=shutil.ignore_patterns("*.png", "*.md"))
    readme = tmp_path / "README.md"
    (s1, e1), (s2, e2) = SUMMARY_MARKERS, SCALE_MARKERS
    readme.write_text(f"a\n{s1}\nold\n{e1}\nb\n{s2}\nold\n{e2}\nc\n")
    write_summary(results, readme=readme)
    text = readme.read_text()
    assert _block(text, SUMMARY_MARKERS) == (results / "summary.md").read_text()
    assert _block(text, SCALE_MARKERS) == (results / "scale.md").read_text()
    assert text.startswith("a\n") and "\nb\n" in text and text.endswith("\nc\n")


def test_the_readme_shows_the_table_make_demo_wrote() -> None:
    written = (ROOT / "bench" / "results" / "demo.md").read_text()
    assert "| method |" in written and "| ICE |" in written
    assert _block((ROOT / "README.md").read_text()) == written


def test_markdown_table_and_splice(tmp_path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("method,n_concepts,fid_c,fid_r,accuracy,reconstruction_error,c_insertion,c_deletion,"
                   "c_mu_fidelity,c_gini,sparsity,stability,kept_area,pixel_deletion,pixel_insertion,seconds,"
                   "error\n"
                   "ice,3,0.5,0.25,1.0,0.8,0.9,-0.1,0.7,0.5,0.4,,,,,1.25,\n"
                   "pca,3,0.75,0.5,1.0,0.7,0.6,0.2,0.1,0.6,1.0,,,,,0.5,\n")
    md = markdown_table(CompareResult.from_csv(csv))
    lines = md.splitlines()
    assert lines[0].startswith("| method | Fid_c ↑ | Fid_r ↓ |")
    assert lines[2].startswith("| ICE | 50\u00a0% | **0.250** |")
    assert lines[3].startswith("| PCA | **75\u00a0%** |")
    readme = tmp_path / "README.md"
    start, end = README_MARKERS
    readme.write_text(f"intro\n{start}\nold table\n{end}\noutro\n")
    splice_readme(readme, md)
    assert readme.read_text() == f"intro\n{start}\n{md}{end}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(Exception, match="markers"):
        splice_readme(readme, md)


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_readme_is_short_and_every_table_is_written_by_a_command() -> None:
    text = (ROOT / "README.md").read_text()
    outside = _outside_blocks(text)
    # the prose stays short; the tables the commands write are data (demo, benchmark summary, scale)
    assert len(outside.splitlines()) <= 125
    # Outside the command-written blocks only tables without measured numbers are allowed (the methods table).
    for line in outside.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            assert not re.search(r"\d+(\.\d+)?\s?(%|×|s\b)|\b0\.\d{2,}", line), f"a typed number: {line}"


def test_the_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    links = [link for link in re.findall(r"\]\(([^)#]+)", text) if "://" not in link]
    assert len(links) >= 8
    for link in links:
        assert (ROOT / link).exists(), f"README links to a missing file: {link}"


def test_the_readme_cli_lines_name_real_commands_and_options() -> None:
    import typer.main

    from conceptlens.cli import app

    group = typer.main.get_command(app)
    lines = [line for block in _code_blocks((ROOT / "README.md").read_text(), "bash")
             for line in block.splitlines() if line.startswith("conceptlens ")]
    assert len(lines) >= 5
    for line in lines:
        words = shlex.split(line.split("#")[0])
        if words[1].startswith("--"):
            continue
        cmd = group.commands[words[1]]          # KeyError: the README names a command that does not exist
        known = {opt for p in cmd.params for opt in p.opts}
        for word in words[2:]:
            if word.startswith("-"):
                assert word in known, f"{words[1]} has no option {word}"


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch) -> None:
    blocks = _code_blocks((ROOT / "README.md").read_text(), "python")
    (code,) = [b for b in blocks if "import conceptlens" in b]
    assert len(code.strip().splitlines()) <= 11              # "Python in ten lines" (+ the blank line)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "cats.cl").exists() and (tmp_path / "report" / "index.html").is_file()
