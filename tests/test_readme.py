"""The README's numbers are written by commands: the demo table block equals what `make demo` wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from conceptlens.workflows.compare import CompareResult, markdown_table
from conceptlens.workflows.demo import README_MARKERS, splice_readme

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str) -> str:
    start, end = README_MARKERS
    i, j = text.index(start), text.index(end)
    return text[i + len(start) + 1 : j]


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
