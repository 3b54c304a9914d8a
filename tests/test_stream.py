"""The explainer on streamed data: a folder, a DataLoader and a tensor give the same bank; a memory budget
that sends the activations to disk changes no number; memory stays flat in the number of images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import conceptlens as cl
from conceptlens.errors import ImageError, ParameterError
from helpers import TinyNet

METHODS: dict[str, dict[str, Any]] = {
    "nmf": {},
    "craft": {"patch_size": 8, "max_iter": 30, "tol": 1e-3},
    "face": {"max_iter": 5},
}


@pytest.fixture(scope="module")
def split() -> cl.ModelSplit:
    return cl.ModelSplit(TinyNet(), "auto")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 generated 20×20 PNG images (resized to the model's 16 × 16 when read)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / f"img{i:03d}.png")
    return d


def _close(a: cl.ConceptExplainer, b: cl.ConceptExplainer, atol: float = 1e-5) -> None:
    assert a.target_ == b.target_
    for f in ("concepts_", "importance_", "weights_", "fit_scores_", "fit_logits_"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape, f
        assert torch.allclose(x, y, atol=atol, rtol=1e-5), (f, float((x - y).abs().max()))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_folder_and_dataloader_give_the_tensor_bank(split: cl.ModelSplit, folder: Path, method: str) -> None:
    x = cl.data.load_images(folder, preset=split.preset)
    ex = cl.ConceptExplainer(split, method, 4, seed=0, method_params=METHODS[method])
    ref = ex.fit(x, target=1)
    ref_bank = ref.concepts_.clone()
    assert ref_bank.abs().sum() > 0
    for data, opts in ((str(folder), {"batch_size": 37}),
                       (DataLoader(TensorDataset(x, torch.zeros(300, dtype=torch.long)), batch_size=50), {})):
        got = cl.ConceptExplainer(split, method, 4, seed=0, method_params=METHODS[method])
        got.fit(data, 1, **opts)
        _close(ref, got)
        assert torch.allclose(got.concepts_, ref_bank, atol=1e-5)
        if method == "craft":
            assert ref.crops_ is not None and got.crops_ is not None
            assert torch.equal(ref.crops_.boxes, got.crops_.boxes)
            assert torch.equal(ref.crops_.image_index, got.crops_.image_index)
            assert torch.allclose(ref.crops_.scores, got.crops_.scores, atol=1e-5)


@pytest.mark.parametrize(("method", "params"), [
    ("nmf", {"batch_size": 1000, "max_iter": 60}),
    ("craft", {"patch_size": 8, "batch_size": 700, "max_iter": 60}),
    ("pca", {}),
    ("kmeans", {"batch_size": 1000, "n_init": 1, "max_iter": 20}),
])
def test_a_budget_that_forces_the_store_changes_no_number(
    split: cl.ModelSplit, method: str, params: dict[str, Any], tmp_path: Path
) -> None:
    x = torch.rand(120, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 4 - 2
    mem = cl.ConceptExplainer(split, method, 4, seed=0, method_params=params).fit(x, 2, memory_budget="1GB")
    disk = cl.ConceptExplainer(split, method, 4, seed=0, method_params=params).fit(
        x, 2, memory_budget=0, store_dir=tmp_path / "acts", batch_size=16)
    assert (tmp_path / "acts" / "index.json").exists()  # the store was used (and kept: the user named it)
    _close(mem, disk)
    e_mem, e_disk = mem.explain(x[:8]), disk.explain(x[:8])
    assert torch.allclose(e_mem.contributions, e_disk.contributions, atol=1e-5)


def test_labels_select_the_target_images(split: cl.ModelSplit) -> None:
    x = torch.rand(60, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 4 - 2
    y = torch.arange(60) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    got = cl.ConceptExplainer(split, "nmf", 3, seed=0).fit(loader, target=2, target_images="label")
    ref = cl.ConceptExplainer(split, "nmf", 3, seed=0).fit(x[y == 2], target=2)
    assert got.fit_scores_.shape[0] == 20
    _close(ref, got)
    with pytest.raises(ImageError, match="no image with label 3"):
        cl.ConceptExplainer(split, "nmf", 3).fit(loader, target=3, target_images="label")
    with pytest.raises(ParameterError, match="give target="):
        cl.ConceptExplainer(split, "nmf", 3).fit(loader, target_images="label")
    with pytest.raises(ParameterError, match="unknown option.*batchsize"):
        cl.ConceptExplainer(split, "nmf", 3).fit(loader, target=1, batchsize=4)


def test_explain_a_folder_batch_by_batch(split: cl.ModelSplit, folder: Path) -> None:
    x = cl.data.load_images(folder, preset=split.preset)
    ex = cl.ConceptExplainer(split, "nmf", 4, seed=0).fit(x[:100], target=1)
    ref, got = ex.explain(x), ex.explain(folder, batch_size=64)
    for f in ("scores", "contributions", "residual", "logits", "maps"):
        assert torch.allclose(getattr(ref, f), getattr(got, f), atol=1e-5), f


_CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
import conceptlens as cl
from helpers import TinyNet
from torch.utils.data import DataLoader, IterableDataset

class Gen(IterableDataset):  # images made on the fly: the parent holds none of them
    def __init__(self, n): self.n = n
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for i in range(0, self.n, 50):
            yield torch.rand(min(50, self.n - i), 3, 32, 32, generator=g) * 4 - 2

split = cl.ModelSplit(TinyNet(width=16), "auto")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ex = cl.ConceptExplainer(split, "nmf", 4, seed=0, method_params={{"max_iter": 5, "batch_size": 4096}},
                         importance="linear")
ex.fit(DataLoader(Gen(int(sys.argv[1])), batch_size=None), target=1, memory_budget="2MB")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rss_kb": peak, "base_kb": base, "n": ex.fit_scores_.shape[0]}}))
"""


@pytest.mark.slow
def test_peak_memory_is_flat_in_the_number_of_images(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent)))

    def peak(n: int) -> tuple[int, int]:
        out = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True,
                             check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["n"] == n
        return int(res["rss_kb"]), int(res["rss_kb"]) - int(res["base_kb"])

    (small, grew_small), (large, grew_large) = peak(500), peak(2000)
    assert large <= 1.3 * small, (small, large)
    # and the growth is well below what the 1,500 more images' activations (16·16·32 floats each) would take
    assert grew_large - grew_small < 0.6 * 1500 * 16 * 16 * 32 * 4 / 1024, (grew_small, grew_large)


def test_compare_reads_a_folder(split: cl.ModelSplit, folder: Path) -> None:
    from conceptlens.workflows.compare import compare

    x = cl.data.load_images(folder, preset=split.preset)[:40]
    paths = sorted(str(p) for p in folder.iterdir())[:40]
    ref = compare(split, x, 1, methods=("nmf", "pca"), n_concepts=3)
    got = compare(split, paths, 1, methods=("nmf", "pca"), n_concepts=3)
    assert [r["method"] for r in got.rows] == ["nmf", "pca"]
    for a, b in zip(ref.rows, got.rows, strict=True):
        for key, v in a.items():
            if isinstance(v, float) and key != "seconds":
                assert v == pytest.approx(b[key], abs=1e-5, nan_ok=True), key


def test_cli_fit_reads_one_class_folder_streamed(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conceptlens.cli import app

    for cls, n in (("cat", 3), ("dog", 5)):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        rng = np.random.default_rng(n)
        for i in range(n):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "tree" / cls / f"{i}.png")
    out = tmp_path / "dog.cl"
    res = CliRunner().invoke(app, ["fit", "--images", str(tmp_path / "tree"), "--class-folder", "dog",
                                   "-k", "3", "--memory-budget", "1MB", "--batch-size", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "on 5 images; streamed" in res.output
    ex = cl.ConceptExplainer.load(out)
    assert ex.concepts_.shape[0] == 3
    res = CliRunner().invoke(app, ["fit", "--images", str(tmp_path / "tree"), "--class-folder", "dgo", "-o",
                                   str(out)])
    assert res.exit_code == 2 and "did you mean" in res.output.lower() and "dog" in res.output
