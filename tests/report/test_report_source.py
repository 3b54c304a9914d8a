"""The report from a source (folder, DataLoader): the page of the tensor, holding only the shown images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import conceptlens as cl
from conceptlens.errors import ParameterError
from conceptlens.io.sources import ImageSource
from conceptlens.report import figures
from conceptlens.stream import evaluate_source
from helpers import TinyNet

N, K, N_PROTOTYPES, N_LOCAL = 40, 4, 3, 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 generated PNGs (smooth random colour fields, 20 × 20)."""
    d = tmp_path_factory.mktemp("pngs")
    g = torch.Generator().manual_seed(3)
    low = torch.rand(N, 3, 4, 4, generator=g)
    pics = torch.nn.functional.interpolate(low, size=(20, 20), mode="bilinear", align_corners=False)
    for i, p in enumerate(pics):
        pixels = (p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(d / f"im{i:02d}.png")
    return d


@pytest.fixture(scope="module")
def fitted(folder: Path) -> tuple[cl.ConceptExplainer, torch.Tensor, list[str]]:
    model = TinyNet(n_classes=4, width=8, seed=0)
    x, names = cl.data.load_images(folder, preset=model.preset, return_paths=True)
    ex = cl.ConceptExplainer(cl.ModelSplit(model, "auto", progress=False), method="nmf", n_concepts=K,
                             importance="linear", seed=0, progress=False)
    return ex.fit(x, target=1), x, names


def _page(out: Path) -> str:
    return (out / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("sections", [{}, {"edit_sections": True, "craft_sections": True}])
def test_a_folder_gives_the_page_of_the_tensor(fitted, folder: Path, tmp_path: Path, monkeypatch,
                                               sections: dict) -> None:
    ex, x, names = fitted
    common = {"n_prototypes": N_PROTOTYPES, "n_local": N_LOCAL, "progress": False, **sections}
    cl.report.write(ex, x, tmp_path / "memory", names=names, **common)

    pictures: list[int] = []
    taken: list[int] = []
    to_pictures, take = figures.to_pictures, ImageSource.take
    monkeypatch.setattr(figures, "to_pictures",
                        lambda xs, *a: pictures.append(len(xs)) or to_pictures(xs, *a))
    monkeypatch.setattr(ImageSource, "take", lambda self, i: taken.append(len(i)) or take(self, i))
    cl.report.write(ex, str(folder), tmp_path / "stream", batch_size=7, **common)

    assert _page(tmp_path / "stream") == _page(tmp_path / "memory")  # every number, name and caption
    for png in ("importance.png", "concept_000.png", "input_003.png"):  # the local bars are inline SVG
        got, want = (tmp_path / "stream" / "img" / png), (tmp_path / "memory" / "img" / png)
        assert got.read_bytes() == want.read_bytes(), png
    # the builder fetched the shown images once, and pictured only them: the prototypes, the local
    # explanations (and CRAFT's map strips of their first images), never the 40 images
    top = torch.topk(ex.explain(x, maps="none").scores, N_PROTOTYPES, 0).indices
    shown = len(np.unique(np.r_[top.ravel().numpy(), np.arange(N_LOCAL)]))
    assert taken == [shown] and shown < N
    assert max(pictures) == shown and sum(pictures) <= shown + (3 if sections else 0)


def test_a_dataloader_and_the_metrics_stream_too(fitted, tmp_path: Path) -> None:
    ex, x, _ = fitted
    loader = DataLoader(TensorDataset(x), batch_size=9)
    cl.report.write(ex, x, tmp_path / "memory", progress=False)
    cl.report.write(ex, loader, tmp_path / "loader", progress=False)
    assert _page(tmp_path / "loader") == _page(tmp_path / "memory")
    want, got = cl.metrics.evaluate(ex, x), evaluate_source(ex, loader)
    assert got.keys() == want.keys()
    for key in want:  # counts equal; sums in float64 across batches: equal to rounding
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key


def test_bad_input_on_a_source_says_what_to_do(fitted, folder: Path, tmp_path: Path) -> None:
    ex, x, _ = fitted
    with pytest.raises(ParameterError, match="drop A"):
        cl.report.write(ex, str(folder), tmp_path, A=ex.activations(x))
    with pytest.raises(ParameterError, match="names must be a list of 40"):
        cl.report.write(ex, str(folder), tmp_path, names=["a", "b"])
    with pytest.raises(ParameterError, match="unknown option"):
        cl.report.write(ex, str(folder), tmp_path, batchsize=3)
    with pytest.raises(ParameterError, match="shuffle=False"):  # a second pass would give other images
        cl.report.write(ex, DataLoader(TensorDataset(x), batch_size=8, shuffle=True), tmp_path)


def test_fitted_out_of_core_from_the_folder_then_reported_from_it(fitted, folder: Path,
                                                                  tmp_path: Path) -> None:
    ex, x, names = fitted
    streamed = cl.ConceptExplainer(ex.split, method="nmf", n_concepts=K, importance="linear", seed=0,
                                   method_params={"batch_size": 256}, progress=False)
    streamed.fit(str(folder), target=1, batch_size=6, memory_budget=1)  # every activation to the store
    assert streamed.stream_["on_disk"] and streamed.stream_["n_images"] == N
    cl.report.write(streamed, str(folder), tmp_path / "stream", batch_size=6, progress=False)
    cl.report.write(streamed, x, tmp_path / "memory", names=names, progress=False)
    assert _page(tmp_path / "stream") == _page(tmp_path / "memory")
