"""The command line, in process (typer's CliRunner) on a tiny model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from conceptlens.cli import app


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids OpenMP spin-waiting on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_pngs(folder: Path, x: torch.Tensor) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, p in enumerate((x * 0.25 + 0.5).clamp(0, 1)):
        path = folder / f"img {i}.png"  # a space: file names are user data
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
        paths.append(path)
    return paths


def _invoke(args: list[str]):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, args)


# ------------------------------------------------------------------------------------------------ mask
def test_mask_writes_overlays_csv_and_page(tmp_path: Path, tiny_images: torch.Tensor) -> None:
    paths = _write_pngs(tmp_path / "imgs", tiny_images[:2])
    out = tmp_path / "out"
    res = _invoke(["mask", *map(str, paths), "-o", str(out), "--model", "conftest:TinyNet", "--steps", "12",
                   "--seed", "1"])
    assert res.exit_code == 0, res.output
    for i in range(2):
        png = out / f"img_{i}_mask.png"
        assert png.is_file()
        with Image.open(png) as im:
            assert im.size == (16, 16)
    with open(out / "masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["img 0.png", "img 1.png"]
    cols = set(rows[0])
    need = {"name", "target", "target_name", "kept_fraction", "top1_kept", "confidence", "deletion_auc",
            "insertion_auc"}
    for b in ("occlusion", "grad_cam", "random"):
        need |= {f"{b}_top1_kept", f"{b}_confidence", f"{b}_deletion_auc", f"{b}_insertion_auc"}
    assert need <= cols
    for r in rows:
        assert 0 < float(r["kept_fraction"]) <= 1 and r["top1_kept"] in ("0", "1")
        assert r["target_name"] == f"class {r['target']}"
        for k in ("confidence", "deletion_auc", "insertion_auc", "occlusion_confidence"):
            assert 0 <= float(r[k]) <= 1
    page = (out / "index.html").read_text()
    assert "img 0.png" in page and "occlusion" in page and "http" not in page
    assert (out / "img" / "masks_000.png").is_file() and (out / "img" / "masks_001.png").is_file()
    # the printed table has one line per image and the means
    assert "img 0.png" in res.output and "means:" in res.output and "masks.csv" in res.output


def test_mask_amortised_and_explicit_target(tmp_path: Path, tiny_images: torch.Tensor) -> None:
    paths = _write_pngs(tmp_path / "imgs", tiny_images[:3])
    out = tmp_path / "am"
    res = _invoke(["mask", str(tmp_path / "imgs"), "-o", str(out), "--model", "conftest:TinyNet",
                   "--amortised", "--steps", "4", "--no-baselines"])
    assert res.exit_code == 0, res.output
    with open(out / "masks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and "occlusion_top1_kept" not in rows[0] and "random_top1_kept" in rows[0]
    assert "amortised" in (out / "index.html").read_text()
    # a named class for every image (per-image mode)
    res = _invoke(["mask", str(paths[0]), "-o", str(tmp_path / "t"), "--model", "conftest:TinyNet",
                   "--steps", "3", "--target", "class 2", "--no-baselines", "--area-mode", "budget"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "t" / "masks.csv", newline="") as f:
        assert next(csv.DictReader(f))["target"] == "2"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "steps"),
        (["--area-mode", "budgt"], "'budget', 'penalty' or 'both'"),
        (["--target", "9"], "out of range"),
        (["--target", "clas 1"], "did you mean"),
        (["--model", "nope_module:factory"], "cannot import"),
    ],
)
def test_mask_bad_input_exits_2_with_a_message(tmp_path: Path, tiny_images: torch.Tensor, extra: list[str],
                                               message: str) -> None:
    paths = _write_pngs(tmp_path / "imgs", tiny_images[:1])
    args = ["mask", str(paths[0]), "-o", str(tmp_path / "o"), "--model", "conftest:TinyNet", *extra]
    res = _invoke(args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output


def test_mask_missing_image_exits_2(tmp_path: Path) -> None:
    res = _invoke(["mask", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), "--model",
                   "conftest:TinyNet"])
    assert res.exit_code == 2 and "error:" in res.output
    assert not (tmp_path / "o" / "masks.csv").exists()


def test_mask_amortised_with_another_target_is_refused(tmp_path: Path, tiny_images: torch.Tensor) -> None:
    _write_pngs(tmp_path / "imgs", tiny_images[:4])
    with torch.no_grad():
        from helpers import TinyNet

        top = TinyNet()(tiny_images[:4]).argmax(1)
    # a class that is nobody's top-1 cannot be explained by the amortised generator
    other = next(c for c in range(4) if c not in top.tolist()) if len(set(top.tolist())) < 4 else None
    if other is None:
        pytest.skip("every class is some image's top-1")
    res = _invoke(["mask", str(tmp_path / "imgs"), "-o", str(tmp_path / "o"), "--model", "conftest:TinyNet",
                   "--amortised", "--steps", "2", "--target", str(other)])
    assert res.exit_code == 2 and "top-1" in res.output


# ------------------------------------------------------------------------------------------------ sweep
@pytest.mark.slow  # trains the world CNN when its cache is empty
def test_sweep_world_writes_table_files_and_reference_rows(tmp_path: Path) -> None:
    import json

    from conceptlens.workflows.sweep import SWEEP_COLUMNS

    out = tmp_path / "sw"
    res = _invoke(["sweep", "--method", "face", "--kl-weights", "0,1", "--world", "--n-images", "6",
                   "--target", "0", "-k", "3", "--max-iter", "20", "-o", str(out)])
    assert res.exit_code == 0, res.output
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SWEEP_COLUMNS
    got = [(r["method"], float(r["kl_weight"])) for r in rows]
    assert got == [("ice", 0.0), ("craft", 0.0), ("face", 0.0), ("face", 1.0)]
    face = {float(r["kl_weight"]): r for r in rows if r["method"] == "face"}
    assert float(face[1.0]["kl"]) <= float(face[0.0]["kl"])  # the KL term does its job
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["c_ins"]) <= 1 and float(r["seconds"]) >= 0
        assert r["stability"] == "nan"  # not requested
    d = json.loads((out / "sweep.json").read_text())
    assert d["config"]["target_names"] == ["disc+red"] and d["config"]["n_concepts"] == 3
    assert len(d["rows"]) == 4 and "claim" in d
    with Image.open(out / "sweep.png") as im:
        assert im.format == "PNG"
    # the printed table: one line per row, and the verdict
    assert "ICE" in res.output and "CRAFT" in res.output and "claim" in res.output
    assert sum(line.startswith("FACE ") for line in res.output.splitlines()) >= 2


@pytest.mark.parametrize("method", ["nmf", "craft", "pca"])
def test_sweep_other_method_exits_2(tmp_path: Path, method: str) -> None:
    res = _invoke(["sweep", "--method", method, "--world", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "only face has a λ" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("weights", ["-1", "0,abc", "", "0,inf"])
def test_sweep_bad_kl_weights_exit_2(tmp_path: Path, weights: str) -> None:
    res = _invoke(["sweep", "--kl-weights", weights, "--world", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "KL weight" in res.output


@pytest.mark.slow  # loads (and, with an empty cache, trains) the world CNN before it reads the class
def test_sweep_world_unknown_class_exits_2(tmp_path: Path) -> None:
    res = _invoke(["sweep", "--world", "--target", "disc+blu", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "did you mean" in res.output


@pytest.mark.slow
def test_sweep_lite0_on_crops_of_one_photo(tmp_path: Path) -> None:
    import conceptlens as cl

    photo = cl.data.sample_images(names=["chelsea"])
    # _write_pngs undoes the tiny model's normalisation, so the colours are off: no particular class is needed
    _write_pngs(tmp_path / "imgs", photo)
    out = tmp_path / "lite"
    res = _invoke(["sweep", "--images", str(tmp_path / "imgs"), "--crop", "112", "-k", "3", "--kl-weights",
                   "0,0.1", "--max-iter", "10", "-o", str(out)])
    assert res.exit_code == 0, res.output
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["ice", "craft", "face", "face"]
    assert float(rows[3]["kl"]) <= float(rows[2]["kl"])
    assert "layer _swish@1" in res.output


# ------------------------------------------------------------------------------- saved explainers
@pytest.mark.parametrize("command", ["evaluate", "report", "explain"])
def test_a_saved_file_never_runs_its_model_factory_without_the_flag(tmp_path: Path, tiny_images: torch.Tensor,
                                                                   command: str) -> None:
    import conceptlens as cl
    from helpers import TinyNet

    model = TinyNet()
    model.cl_name = "helpers:TinyNet"  # a 'package.module:factory' name in the manifest
    ex = cl.ConceptExplainer(cl.ModelSplit(model, "auto"), method="nmf", n_concepts=3, seed=0)
    saved = ex.fit(tiny_images, target=1).save(tmp_path / "e.cl")
    folder = tmp_path / "imgs"
    _write_pngs(folder, tiny_images[:3])
    imgs = [str(folder)] if command == "explain" else ["--images", str(folder)]
    out = ["-o", str(tmp_path / command)] if command != "evaluate" else []
    refused = _invoke([command, str(saved), *imgs, *out])
    assert refused.exit_code == 2 and "--trust-model-factory" in refused.output
    assert "Traceback" not in refused.output
    trusted = _invoke([command, str(saved), *imgs, *out, "--trust-model-factory"])
    assert trusted.exit_code == 0, trusted.output


def test_user_errors_print_one_line_and_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    from conceptlens.cli import main
    from conceptlens.errors import SavedFileError

    missing = str(tmp_path / "missing.cl")
    with pytest.raises(SystemExit) as code:
        main(["evaluate", missing, "--images", str(tmp_path)])
    err = capsys.readouterr().err
    assert code.value.code == 2 and "no saved explainer" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SavedFileError):
        main(["evaluate", missing, "--images", str(tmp_path), "--debug"])


def test_an_unwritable_output_is_one_line_not_a_traceback(tmp_path: Path, tiny_images: torch.Tensor,
                                                          capsys) -> None:
    from conceptlens.cli import main

    (tmp_path / "file").write_text("x")
    imgs = [str(p) for p in _write_pngs(tmp_path / "imgs", tiny_images[:2])]
    with pytest.raises(SystemExit) as code:  # the output folder would have to live under a file
        main(["mask", *imgs, "-o", str(tmp_path / "file" / "out"), "--steps", "2", "--no-baselines"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and "Traceback" not in err and "file" in err
