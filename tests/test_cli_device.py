"""``--device`` on every command that runs a model: one parser (models.resolve_device), one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import conceptlens as cl
from conceptlens.cli import app

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(),
                            reason="checks the error of a CUDA request without a GPU")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fitted explainer on TinyNet (its manifest names the factory 'helpers:TinyNet') and a PNG folder."""
    from helpers import TinyNet

    d = tmp_path_factory.mktemp("device")
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    (d / "imgs").mkdir()
    for i, p in enumerate((x * 0.25 + 0.5).clamp(0, 1)):
        pixels = (p.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).save(d / "imgs" / f"{i}.png")
    model = TinyNet()
    model.cl_name = "helpers:TinyNet"
    ex = cl.ConceptExplainer(cl.ModelSplit(model, "auto", progress=False), method="nmf", n_concepts=3, seed=0,
                             progress=False)
    return ex.fit(x, target=1).save(d / "e.cl"), d / "imgs"


def _invoke(args: list[str]):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, args)


def _args(command: str, saved: tuple[Path, Path], tmp_path: Path) -> list[str]:
    file, imgs = str(saved[0]), str(saved[1])
    out = ["-o", str(tmp_path / command)]
    trust = ["--trust-model-factory"]
    return {
        "explain": ["explain", file, imgs, *out, *trust],
        "evaluate": ["evaluate", file, "--images", imgs, *trust],
        "report": ["report", file, "--images", imgs, *out, *trust],
        "sweep": ["sweep", "--model", "helpers:TinyNet", "--images", imgs, *out],
        "fit": ["fit", "--images", imgs, "--model", "helpers:TinyNet", *out],
        "compare": ["compare", "--images", imgs, "--model", "helpers:TinyNet", *out],
        "mask": ["mask", imgs, "--model", "helpers:TinyNet", *out],
        "layers": ["layers", "--model", "helpers:TinyNet"],
    }[command]


COMMANDS = ["explain", "evaluate", "report", "sweep", "fit", "compare", "mask", "layers"]


@NO_GPU
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_without_a_gpu_is_one_clear_error(command: str, saved, tmp_path: Path) -> None:
    res = _invoke([*_args(command, saved, tmp_path), "--device", "cuda"])
    assert res.exit_code == 2, res.output
    assert "torch sees no CUDA GPU here; use --device cpu" in res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    assert not (tmp_path / command).exists()  # refused before anything was computed or written


@pytest.mark.parametrize("command", ["explain", "evaluate", "report", "sweep"])
def test_an_unknown_device_names_the_choices(command: str, saved, tmp_path: Path) -> None:
    res = _invoke([*_args(command, saved, tmp_path), "--device", "gpu0"])
    assert res.exit_code == 2 and "unknown device 'gpu0'; use 'cpu', 'cuda[:N]' or 'auto'" in res.output


def test_evaluate_streams_the_images_and_auto_equals_the_default(saved, tmp_path: Path) -> None:
    from helpers import TinyNet

    runs = [_invoke([*_args("evaluate", saved, tmp_path), "--json", *dev])
            for dev in ([], ["--device", "auto"])]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    got = json.loads(runs[0].output)
    assert json.loads(runs[1].output) == got  # auto is the CPU here (or the GPU, where the numbers agree)
    # oracle: metrics.evaluate on every image in one tensor
    ex = cl.ConceptExplainer.load(saved[0], model=TinyNet())
    want = cl.metrics.evaluate(ex, cl.data.load_images(saved[1], preset=ex.split.preset))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key


def test_report_on_a_folder_names_the_files(saved, tmp_path: Path) -> None:
    res = _invoke([*_args("report", saved, tmp_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert f"{saved[1] / '0.png'}" in page and "image 0" not in page
