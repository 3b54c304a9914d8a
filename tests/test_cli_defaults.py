"""Defaults a newcomer expects (#22 item 5): no option is required only because no default was chosen.

The only required inputs left are the data a command cannot guess (the images to fit or explain, the saved
explainer); everything else has a default, printed where it was chosen for the user."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from conceptlens.cli import app
from conceptlens.explainer import read_saved

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")

#: command → its required parameters: each is user data without a sensible default.
REQUIRED = {
    "fit": {"images"},
    "explain": {"file", "images"},
    "evaluate": {"file", "images"},
    "report": {"file", "images"},
    "mask": {"images"},
}


def _pngs(folder: Path, x: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate((x * 0.25 + 0.5).clamp(0, 1)):
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(folder / f"{i}.png")
    return folder


def _run(args: list[str]):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def test_only_user_data_is_required():
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    required = {name: {p.name for p in cmd.params if p.required} for name, cmd in group.commands.items()}
    assert {k: v for k, v in required.items() if v} == REQUIRED


def test_fit_recursive_without_layers_picks_the_earlier_stages(tmp_path, tiny_images):
    folder = _pngs(tmp_path / "imgs", tiny_images[:4])
    out = tmp_path / "c.cl"
    res = _run(["fit", "--images", str(folder), "--out", str(out), "--model", "conftest:TinyNet",
                "--method", "craft", "-k", "3", "--patch", "8", "--stride", "4", "--target", "1",
                "--recursive"])
    assert "--recursive: splitting concepts at features.1 " in res.output  # printed, before the fit
    manifest, _ = read_saved(out)
    assert "tree" in manifest
    # --layers still overrides (an explicit layer the default would not pick: the same resolution is refused)
    bad = CliRunner().invoke(app, ["fit", "--images", str(folder), "--out", str(out), "--model",
                                   "conftest:TinyNet", "--method", "craft", "-k", "3", "--patch", "8",
                                   "--recursive", "--layers", "features.3"])
    assert bad.exit_code == 2 and "does not come before" in bad.output


def test_recursive_fit_without_layers_splits_at_the_earlier_stage(tiny, tiny_images):
    import conceptlens as cl

    ex = cl.ConceptExplainer(cl.ModelSplit(tiny, "auto"), method="nmf", n_concepts=3, seed=0)
    ex.fit(tiny_images, target=1, recursive=True, recursive_params={"threshold": 0.0, "n_top": 4,
                                                                   "n_children": 2, "max_split": 1})
    split = [n for n in ex.tree_.children if n.children]
    assert len(split) == 1 and {c.layer for c in split[0].children} == {"features.1"}


def test_earlier_stages_on_the_real_model(lite0_split):
    from conceptlens.stages import earlier_stages

    layers = earlier_stages(lite0_split)
    shapes = dict(lite0_split.describe_layers())
    assert layers == ["_blocks.11._swish@0", "_blocks.5._swish@0"]
    assert [shapes[s][:2] for s in layers] == [(14, 14), (28, 28)]  # the two resolutions before 7×7


def test_earlier_stages_refuses_the_first_stage(tiny):
    import conceptlens as cl
    from conceptlens.stages import earlier_stages

    with pytest.raises(cl.ConceptLensError, match="no earlier stage"):
        earlier_stages(cl.ModelSplit(tiny, "features.1"))


def test_fit_writes_method_named_file_by_default(tmp_path, tiny_images, monkeypatch):
    folder = _pngs(tmp_path / "imgs", tiny_images[:6])
    monkeypatch.chdir(tmp_path)
    res = _run(["fit", "--images", str(folder), "--model", "conftest:TinyNet", "--method", "pca", "-k", "2"])
    assert (tmp_path / "pca.cl").is_file() and "saved: pca.cl" in res.output
    assert read_saved(tmp_path / "pca.cl")[0]["params"]["method"] == "pca"


def test_mask_and_sweep_write_to_default_folders(tmp_path, tiny_images, monkeypatch):
    folder = _pngs(tmp_path / "imgs", tiny_images[:2])
    monkeypatch.chdir(tmp_path)
    _run(["mask", str(folder), "--model", "conftest:TinyNet", "--steps", "2", "--no-baselines",
          "--area-mode", "budget"])
    assert (tmp_path / "masks" / "masks.csv").is_file() and (tmp_path / "masks" / "index.html").is_file()
    _run(["sweep", "--images", str(folder), "--model", "conftest:TinyNet", "--kl-weights", "0", "-k", "2",
          "--max-iter", "5"])
    assert (tmp_path / "sweep" / "sweep.csv").is_file()


def test_compare_without_images_uses_the_sample_photos(tmp_path):
    from conceptlens.io.samples import sample_image_names

    out = tmp_path / "cmp"
    res = _run(["compare", "--model", "conftest:TinyNet", "--methods", "pca", "-k", "2", "--out", str(out)])
    n = len(sample_image_names())
    assert f"no --images: using the {n} bundled sample photos" in res.output
    assert (out / "compare.csv").is_file() and (out / "index.html").is_file()
