"""Adding a method = one new file: a random-projection baseline registered from this test alone runs
through the explainer, compare, the report and save / load, with no other file of the library touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
import torch

import conceptlens as cl
from conceptlens.decompose import base
from conceptlens.decompose.base import Decomposition, register
from helpers import TinyNet


class RandomProjection(Decomposition):
    """``W [k, C]``: orthonormal rows of a seeded Gaussian; ``U = A Wᵀ`` (least squares), ``Â = U W``."""

    label: ClassVar[str] = "RandProj"

    def fit(self, A: torch.Tensor) -> RandomProjection:
        rows = self._validate(A)
        g = torch.Generator().manual_seed(self.seed)
        G = torch.randn(rows.shape[1], self.n_concepts, generator=g, dtype=torch.float64)
        Q, _ = torch.linalg.qr(G)  # [C, k] orthonormal columns
        self.components_ = Q.T.contiguous().to(rows.dtype)
        return self

    def _encode_rows(self, A: torch.Tensor) -> torch.Tensor:
        return A @ self.components_.T


@pytest.fixture()
def randproj() -> Iterator[type[RandomProjection]]:
    register("randproj")(RandomProjection)
    try:
        yield RandomProjection
    finally:
        base._REGISTRY.pop("randproj", None)


@pytest.fixture()
def setup() -> tuple[cl.ModelSplit, torch.Tensor]:
    split = cl.ModelSplit(TinyNet(), "auto")
    return split, torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_registered_method_is_available_and_explains(randproj, setup) -> None:
    split, x = setup
    assert "randproj" in cl.decompose.available()
    ex = cl.ConceptExplainer(split, method="randproj", n_concepts=4, seed=0).fit(x, target=1)
    e = ex.explain(x)
    torch.testing.assert_close(e.contributions.sum(1) + e.residual + e.bias, e.logits, rtol=1e-4, atol=1e-5)
    W = ex.concepts_
    torch.testing.assert_close(W @ W.T, torch.eye(4), rtol=0, atol=1e-5)


def test_registered_method_runs_through_compare_and_the_report(randproj, setup, tmp_path) -> None:
    from conceptlens.workflows.compare import compare, write_report

    split, x = setup
    res = compare(split, x, 1, methods=("nmf", "randproj"), n_concepts=4, seed=0, progress=False)
    row = {r["method"]: r for r in res.rows}["randproj"]
    assert row["error"] == "" and 0.0 <= row["fid_c"] <= 1.0
    path = write_report(res, x, tmp_path / "cmp", progress=False)
    page = path.read_text()
    assert "RandProj" in page  # the declared label, not a name the report had to know
    assert (tmp_path / "cmp" / "randproj" / "index.html").is_file()


def test_registered_method_saves_and_loads(randproj, setup, tmp_path) -> None:
    split, x = setup
    ex = cl.ConceptExplainer(split, method="randproj", n_concepts=4, seed=3).fit(x, target=2)
    p = ex.save(tmp_path / "rp.cl")
    back = cl.ConceptExplainer.load(p, split=split)
    assert back.method == "randproj" and back.target_ == 2
    A = split.g(x)
    torch.testing.assert_close(back.encode(A), ex.encode(A), rtol=0, atol=0)
    torch.testing.assert_close(back.explain(x).contributions, ex.explain(x).contributions, rtol=0, atol=0)


def test_a_new_file_in_decompose_registers_itself(tmp_path) -> None:
    # one new file, nothing else edited: the package imports its public modules, the file registers itself
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    src = Path(cl.__file__).resolve().parent
    pkg = tmp_path / "src" / "conceptlens"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "decompose" / "randproj.py").write_text(
        "from conceptlens.decompose.base import Decomposition, register\n\n\n"
        "@register('randproj')\nclass RandomProjection(Decomposition):\n    label = 'RandProj'\n"
    )
    code = ("import conceptlens as cl; d = cl.decompose.get('randproj'); "
            "print(d.display_name(), 'randproj' in cl.decompose.available())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(tmp_path / "src"), "PATH": ""}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["RandProj", "True"]
