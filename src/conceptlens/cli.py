"""The ``conceptlens`` command line: it parses arguments and calls the workflows and the explainer, nothing
more.

Commands: ``demo`` (every method compared on the bundled model and photos), ``compare``, ``fit``,
``explain``, ``evaluate``, ``report``, ``layers``, ``mask``, ``sweep``, ``bench``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Explain what a PyTorch image classifier has learned, in terms of concepts. "
         "Add --debug anywhere to see the traceback of an error.",
)

_MODEL_HELP = ("Model: 'efficientnet_lite0' (offline ImageNet weights), 'torchvision:<arch>' or "
               "'timm:<arch>' with --weights, 'hf:<folder saved with save_pretrained>', or "
               "'package.module:factory'.")
# Parameters shared by several commands (typer copies each one before use, so one object can serve them all).
_FILE = typer.Argument(..., help="A fitted explainer (.cl).")
_IMAGE_FILES = typer.Option(..., "--images", help="Folder, file or glob of images (repeatable).")
_MODEL_OVERRIDE = typer.Option(None, help="The model the file was fitted on (unless it is the bundled one).")
_WEIGHTS = typer.Option(None, help="Local weights file for the model.")
_SIGNED = typer.Option("keep", "--signed",
                       help="keep: activations as they are; split: [max(A,0), max(-A,0)], an exact "
                            "non-negative view of a signed layer (a ViT's tokens) for ice, nmf, craft, face.")
_DEVICE = typer.Option("cpu", "--device", help="Where the model and every computation run: cpu, cuda, "
                                               "cuda:N or auto (cuda when there is a GPU).")
_TRUST = typer.Option(False, "--trust-model-factory",
                      help="Import and call the 'package.module:factory' model the saved file names (only "
                           "for files you trust; otherwise pass --model).")


#: Set by ``--debug`` (anywhere on the command line): user errors show their traceback.
_DEBUG = False


def _print_version(value: bool) -> None:
    if value:
        from conceptlens._version import __version__

        typer.echo(f"conceptlens {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print conceptlens's version and exit."),
) -> None:
    pass


def _fail(exc: Exception) -> None:
    if _DEBUG:
        raise exc
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """A :class:`~conceptlens.errors.ConceptLensError` raised inside ends the command by :func:`_fail`."""
    from conceptlens.errors import ConceptLensError

    try:
        yield
    except ConceptLensError as exc:
        _fail(exc)


def _images(path: list[str] | str, preset: object, crop: int) -> tuple[object, list[str]]:
    import conceptlens.io as data

    if not path:  # a command whose --images is optional: the bundled sample photos
        x, names = data.sample_images(preset, return_names=True)  # type: ignore[arg-type]
        typer.echo(f"no --images: using the {len(names)} bundled sample photos")
    else:
        x, names = data.load_images(path, preset=preset, return_paths=True)  # type: ignore[arg-type]
    if crop:
        x, idx, _ = data.crops(x, patch_size=crop, out_size=x.shape[-1])
        names = [f"{names[int(i)]}#{j}" for j, i in enumerate(idx)]
    return x, names


@app.command()
def demo(
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for the HTML report."),
    methods: Optional[str] = typer.Option(  # noqa: UP045
        None, help="Comma-separated methods to compare (default: every method and the masks)."),
    n_concepts: int = typer.Option(10, "--n-concepts", "-k", help="Number of concepts of every method."),
    patch: int = typer.Option(112, help="Crop size in pixels of the 224-px photos (resized to the input)."),
    masks: int = typer.Option(1, "--masks", help="Photos explained by minimal masks (an optimisation each)."),
    sweep: str = typer.Option("0,0.1,1", "--kl-weights",
                              help="FACE's λ values for the report's λ curve ('' for none)."),
    seed: int = typer.Option(0, help="Random seed."),
    table: Optional[Path] = typer.Option(None, help="Also write the markdown table here."),  # noqa: UP045
    readme: Optional[Path] = typer.Option(  # noqa: UP045
        None, help="Put the table between this README's demo-table markers (make demo: README.md)."),
) -> None:
    """Every method compared on EfficientNet-Lite0 and the bundled sample photos, for the class it predicts
    on 'chelsea' (the cat).

    The images are the 13 photos and their crops; writes OUT/index.html (the comparison, with each method's
    own report in OUT/<method>/), OUT/compare.csv and OUT/compare.md, and prints the table. To fit in a few
    minutes on a laptop CPU, CRAFT's crops are the demo's crops, EDDP runs 300 steps without its alignment
    term, and the masks explain the first --masks photos.
    """
    from conceptlens.workflows.demo import DEMO_METHODS, run_demo

    with _reported():
        run_demo(out, methods or DEMO_METHODS, n_concepts, patch, masks, sweep, seed, echo=typer.echo,
                 table=table, readme=readme)


@app.command()
def fit(
    images: list[str] = typer.Option(..., "--images",
                                     help="Folder, file or glob of class images (repeatable)."),
    out: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--out", "-o", help="Output file for the fitted explainer (default: <method>.cl)."),
    model: str = typer.Option("efficientnet_lite0", help=_MODEL_HELP),
    weights: Optional[str] = typer.Option(None, help="Local weights file for the model (state_dict)."),  # noqa: UP045
    device: str = _DEVICE,
    signed: str = _SIGNED,
    layer: str = typer.Option("auto", help="Layer name, or 'auto' (the last spatial layer before pooling)."),
    target: Optional[str] = typer.Option(None, help="Class index or name (default: most predicted class)."),  # noqa: UP045
    method: str = typer.Option("nmf", help="Concept method: nmf, pca, kmeans, …"),
    n_concepts: int = typer.Option(10, "--n-concepts", "-k", help="Number of concepts."),
    importance: str = typer.Option("auto", help="Importance: auto, linear, gradient, sobol."),
    crop: int = typer.Option(0, help="Fit on crops of this many pixels (0: whole images)."),
    patch: Optional[int] = typer.Option(  # noqa: UP045
        None, help="--method craft: crop size in pixels for the concept bank (default 64)."),
    stride: Optional[float] = typer.Option(  # noqa: UP045
        None, help="--method craft: step between crops, in pixels or as a fraction < 1 of the patch "
                   "(default 0.8 × patch)."),
    recursive: bool = typer.Option(
        False, "--recursive",
        help="Split ambiguous concepts into sub-concepts at earlier layers (CRAFT's concept tree; at "
             "--layers)."),
    layers_: Optional[str] = typer.Option(  # noqa: UP045
        None, "--layers", help="Earlier layer(s) for --recursive, deep to shallow, comma-separated (default: "
                               "the outputs of the two stages before --layer, printed)."),
    seed: int = typer.Option(0, help="Random seed."),
    class_folder: Optional[str] = typer.Option(  # noqa: UP045
        None, "--class-folder", help="--images is an ImageFolder tree (data/<class>/*.jpg): read this "
                                     "class's subfolder only (streamed)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass."),  # noqa: UP045
    memory_budget: Optional[str] = typer.Option(  # noqa: UP045
        None, "--memory-budget", help="Stream the images in batches and keep at most this much activations "
                                      "in memory (e.g. 2GB; more goes to an on-disk store)."),
) -> None:
    """Fit concepts for a class on a folder of images and save the explainer.

    Large data: ``--memory-budget 2GB`` (or ``--class-folder``) reads the images batch by batch and keeps
    the activations on disk above the budget.

    CRAFT: ``--method craft`` fits the bank on crops of the images (``--patch``, ``--stride``) and weighs the
    concepts by Sobol indices (``--importance auto``); ``--recursive --layers L1,L2`` grows its concept tree.
    """
    import conceptlens as cl
    from conceptlens.errors import ParameterError

    with _reported():
        m = cl.models.load(model, weights=weights, device=device)
        streamed = class_folder is not None or memory_budget is not None
        if streamed and (crop or recursive):
            raise ParameterError("--crop and --recursive need the images in memory: drop --memory-budget / "
                                 "--class-folder, or those options")
        src = images[0] if len(images) == 1 else images
        x: Any = cl.data.ImageSource(src, m.preset, class_folder=class_folder) if streamed else \
            _images(images, m.preset, crop)[0]
        method_params: dict[str, object] = {}
        if patch is not None or stride is not None:
            if cl.decompose.get(method).fit_on != "crops":
                crop_fitted = [n for n in cl.decompose.available() if cl.decompose.get(n).fit_on == "crops"]
                raise ParameterError(
                    f"--patch/--stride set the crops of a crop-fitted method ({', '.join(crop_fitted)}); "
                    f"method {method!r} fits on whole images: use --crop to cut the images into crops first")
            if patch is not None:
                method_params["patch_size"] = patch
            if stride is not None:
                method_params["stride"] = int(stride) if stride >= 1 and stride == int(stride) else stride
        ex = cl.ConceptExplainer(cl.ModelSplit(m, layer, signed=signed), method=method, n_concepts=n_concepts,
                                 importance=importance, seed=seed, method_params=method_params)
        if recursive and not layers_:
            from conceptlens.stages import earlier_stages

            layers_ = ",".join(earlier_stages(ex.split))
            typer.echo(f"--recursive: splitting concepts at {layers_} (the stages before {ex.split.layer!r}; "
                       "--layers overrides)")
        out = out if out is not None else Path(f"{method}.cl")
        stream = {k: v for k, v in (("batch_size", batch_size), ("memory_budget", memory_budget)) if v}
        ex.fit(x, target=target, recursive=recursive,  # type: ignore[arg-type]
               layers=layers_.split(",") if recursive and layers_ else None, **stream)
        ex.save(out)
        fid = None if streamed else cl.metrics.fidelity(ex, x)
    n = int(ex.fit_scores_.shape[0])
    typer.echo(f"fitted {n_concepts} {method} concepts for {ex.target_name_!r} at layer {ex.split.layer!r} "
               f"on {n} images; " + (f"fid_c = {fid['fid_c']:.3f}, fid_r = {fid['fid_r']:.3f}" if fid else
                                     "streamed (fidelity: conceptlens evaluate on a sample)"))
    imp = ex.importance_result_
    if imp.ci_low is not None and imp.ci_high is not None:
        typer.echo(f"importance ({imp.method}) with 95 % intervals:")
        for j in ex.importance_.argsort(descending=True).tolist():
            typer.echo(f"  concept {j}: {float(ex.importance_[j]):.3f} "
                       f"[{float(imp.ci_low[j]):.3f}, {float(imp.ci_high[j]):.3f}]")
    if ex.tree_ is not None:
        typer.echo(ex.tree_.render())
    typer.echo(f"saved: {out}")



def _load(file: Path, model: Optional[str], weights: Optional[str], trust: bool, device: str) -> Any:  # noqa: UP045
    """The saved explainer, its model on ``device``.

    The model is ``--model`` (with ``--weights``); without it, the file's model only when that is a zoo
    architecture (given ``--weights``) or ships its own weights; a ``package.module:factory`` the file
    names is imported only with ``--trust-model-factory``.
    """
    import conceptlens as cl
    from conceptlens.explainer import read_saved
    from conceptlens.persistence import model_named_in

    dev = cl.models.resolve_device(device)  # a CUDA request without a GPU fails before anything loads
    manifest, _ = read_saved(file)
    name = model
    if name is None and weights is not None and cl.models.is_zoo_name(str(manifest.get("model"))):
        name = str(manifest["model"])  # an architecture from the zoo, with the user's own weights
    m = cl.models.load(name, weights=weights, device=dev) if name is not None else \
        model_named_in(manifest, file, trust_code=trust).to(dev)
    return cl.ConceptExplainer.load(file, model=m)


def _source(images: list[str], preset: Any) -> Any:
    """``--images`` as an ImageSource: the files are decoded batch by batch, never all at once."""
    import conceptlens as cl

    return cl.data.ImageSource(images[0] if len(images) == 1 else images, preset)


@app.command()
def explain(
    file: Path = _FILE,
    images: list[str] = typer.Argument(..., help="Images, folders or globs to explain."),
    out: Path = typer.Option(Path("explanations"), "--out", "-o", help="Output folder."),
    model: Optional[str] = _MODEL_OVERRIDE,  # noqa: UP045
    weights: Optional[str] = _WEIGHTS,  # noqa: UP045
    trust: bool = _TRUST,
    device: str = _DEVICE,
) -> None:
    """Explain images with a fitted explainer: a JSON of contributions and a report of their maps."""
    import conceptlens as cl

    with _reported():
        ex = _load(file, model, weights, trust, device)
        x, names = _images(images, ex.split.preset, 0)
        e = ex.explain(x)
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"image": n, "logit": float(e.logits[i]), "bias": e.bias, "residual": float(e.residual[i]),
                 "scores": e.scores[i].tolist(), "contributions": e.contributions[i].tolist()}
                for i, n in enumerate(names)]
        (out / "explanations.json").write_text(json.dumps({"target": ex.target_name_,
                                                           "weights": e.weights.tolist(),
                                                           "images": rows}, indent=1))
        cl.report.write(ex, x, out, names=names)
    for r in rows:
        typer.echo(f"{r['image']}: logit {r['logit']:.3f} = Σ contributions {sum(r['contributions']):.3f} "
                   f"+ residual {r['residual']:.3f} + bias {r['bias']:.3f}")
    typer.echo(f"wrote {out / 'explanations.json'} and {out / 'index.html'}")


@app.command()
def evaluate(
    file: Path = _FILE,
    images: list[str] = _IMAGE_FILES,
    model: Optional[str] = _MODEL_OVERRIDE,  # noqa: UP045
    weights: Optional[str] = _WEIGHTS,  # noqa: UP045
    trust: bool = _TRUST,
    device: str = _DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the fidelity table (fid_c, fid_r, accuracy, reconstruction error, sparsity) on images (read in
    batches: any number of them)."""
    from conceptlens.stream import evaluate_source

    with _reported():
        ex = _load(file, model, weights, trust, device)
        m = evaluate_source(ex, _source(images, ex.split.preset))
    if as_json:
        typer.echo(json.dumps(m, indent=1))
        return
    typer.echo(f"{'metric':<24}value")
    for k, v in m.items():
        typer.echo(f"{k:<24}{v:.4f}")


@app.command()
def report(
    file: Path = _FILE,
    images: list[str] = _IMAGE_FILES,
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Output folder."),
    model: Optional[str] = _MODEL_OVERRIDE,  # noqa: UP045
    weights: Optional[str] = _WEIGHTS,  # noqa: UP045
    trust: bool = _TRUST,
    device: str = _DEVICE,
) -> None:
    """Write the HTML report (concept prototypes with heatmaps, local explanations) for images.

    The images are read in batches, once; only the shown ones (prototypes, local explanations) are read
    again and kept, so any number of images fits.
    """
    import conceptlens as cl

    with _reported():
        ex = _load(file, model, weights, trust, device)
        path = cl.report.write(ex, _source(images, ex.split.preset), out)
    typer.echo(f"report: {Path(path).resolve()}")


@app.command()
def layers(
    model: str = typer.Option("efficientnet_lite0", help=_MODEL_HELP),
    weights: Optional[str] = _WEIGHTS,  # noqa: UP045
    device: str = _DEVICE,
) -> None:
    """List the model's layers (call sites) with their activation shapes; '*' marks layer='auto'."""
    import conceptlens as cl

    with _reported():
        m = cl.models.load(model, weights=weights, device=device)
        s = cl.ModelSplit(m, "auto", check=False)
    for name, shape in s.describe_layers():
        typer.echo(f"{'*' if name == s.layer else ' '} {name:<48} {list(shape)}")
    if s.auto_note:
        typer.echo(s.auto_note)


@app.command()
def bench(
    what: str = typer.Argument(
        "all", help="Which one: nmf, fidelity, groundtruth, face, masks, eddp, sobol, load, … or all."),
    quick: bool = typer.Option(False, help="Small sizes (for tests)."),
    out: Path = typer.Option(Path("bench/results"), "--out", "-o", help="Folder for the JSON results."),
    busy: int = typer.Option(1, min=0, help="bench load: competing 2-thread CPU-bound processes it starts."),
    rows: Optional[str] = typer.Option(  # noqa: UP045
        None, help="bench scale: only these rows, merged into scale.json, e.g. "
                   "'nmf:100,1000;timm:resnet18/nmf:1000' ([model/]method:N,…)."),
) -> None:
    """Run benchmarks that report ratios against peers measured in the same run; writes JSON."""
    from conceptlens import bench as bench_mod

    try:
        if rows is not None:
            from conceptlens.bench.scale import run_rows

            run_rows(what, rows, quick=quick, out=out)
        else:
            bench_mod.run(what, quick=quick, out=out, busy=busy)
    except Exception as exc:  # noqa: BLE001 - surface any failure as a clean exit code
        from conceptlens.errors import ConceptLensError

        if isinstance(exc, ConceptLensError):
            _fail(exc)
        raise


@app.command()
def compare(
    images: Optional[list[str]] = typer.Option(  # noqa: UP045
        None, "--images", help="Folder, file or glob of images (repeatable); default: the bundled sample "
                               "photos."),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="Output folder."),
    model: str = typer.Option("efficientnet_lite0", help=_MODEL_HELP),
    weights: Optional[str] = typer.Option(None, help="Local weights file for the model (state_dict)."),  # noqa: UP045
    device: str = _DEVICE,
    signed: str = _SIGNED,
    layer: str = typer.Option("auto", help="Layer name, or 'auto'."),
    target: Optional[str] = typer.Option(None, help="Class index or name (default: most predicted class)."),  # noqa: UP045
    methods: str = typer.Option("ice,pca,kmeans,craft,face",
                                help="Comma-separated methods: ice (= nmf), nmf, pca, kmeans, craft, face, "
                                     "masks."),
    n_concepts: int = typer.Option(10, "--n-concepts", "-k", help="Number of concepts of every method."),
    crop: int = typer.Option(0, help="Use crops of this many pixels of the images (0: whole images)."),
    stability: bool = typer.Option(False, "--stability", help="Also measure stability (5 refits each)."),
    kl_weights: str = typer.Option("", "--kl-weights",
                                   help="FACE's λ values for a λ-curve section, e.g. '0,0.1,1'."),
    masks: int = typer.Option(0, "--masks", help="Mask only the first N images (0: all)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Run every method on one class side by side: OUT/compare.csv, OUT/index.html, OUT/<method>/."""
    import conceptlens as cl
    from conceptlens.workflows.compare import check_methods, print_table, write_report
    from conceptlens.workflows.compare import compare as run_compare
    from conceptlens.workflows.demo import sweep_sections

    t0 = time.time()
    with _reported():
        m = cl.models.load(model, weights=weights, device=device)
        x, names = _images(images or [], m.preset, crop)
        split = cl.ModelSplit(m, layer, signed=signed)
        A = split.g(x)
        res = run_compare(split, x, target, methods=methods, n_concepts=n_concepts, seed=seed, A=A,
                          stability=stability, mask_images=masks or None)
        extra = sweep_sections(kl_weights, check_methods(methods), A, split, res.target, n_concepts, seed)
        path = write_report(res, x, out, names=names, A=A, extra_sections=extra)
    print_table(res, typer.echo)
    typer.echo(f"table: {(out / 'compare.csv').resolve()}")
    typer.echo(f"report: {Path(path).resolve()}  ({time.time() - t0:.0f} s)")


@app.command()
def mask(
    images: list[str] = typer.Argument(..., help="Images, folders or globs to explain."),
    out: Path = typer.Option(Path("masks"), "--out", "-o", help="Output folder."),
    model: str = typer.Option("efficientnet_lite0", help=_MODEL_HELP),
    weights: Optional[str] = typer.Option(None, help="Local weights file for the model (state_dict)."),  # noqa: UP045
    device: str = _DEVICE,
    target: Optional[str] = typer.Option(  # noqa: UP045
        None, help="Class index or name for every image (default: each image's top-1)."),
    steps: Optional[int] = typer.Option(  # noqa: UP045
        None, help="Optimisation steps per image (default 100); with --amortised, the generator's "
                   "training steps (default 200)."),
    amortised: bool = typer.Option(
        False, "--amortised",
        help="Train one mask generator on these images, then one forward pass per image (fast, explains "
             "the top-1 only)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="Compare with occlusion and Grad-CAM at equal area."),
    area_mode: str = typer.Option(
        "penalty", "--area-mode",
        help="How the area is driven down: penalty (the paper's area term; default), budget (a pixel "
             "budget that follows the class) or both (one run of each per image, the smaller mask wins; 2x "
             "the time)."),
    detail: Optional[int] = typer.Option(  # noqa: UP045
        None, help="Side of the mask's learned logit map (default: half the image side, 112 at 224; "
                   "the mask generator's own resolution, 28 at 224, gives smoother but larger masks; 0: no "
                   "map, the generator alone)."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Minimal binary masks that keep the model's decision, compared with occlusion and Grad-CAM.

    Writes OUT/<image>_mask.png overlays, OUT/masks.csv (per image: target, kept fraction, top-1 kept,
    confidence, pixel deletion/insertion AUC, and the baselines at equal area) and OUT/index.html.
    """
    import conceptlens as cl
    from conceptlens.attribution.masks.explainer import MaskExplainer
    from conceptlens.report.sections.masks import write_mask_outputs
    from conceptlens.workflows.masks import BASELINES, compare_with_baselines

    t0 = time.time()
    with _reported():
        m = cl.models.load(model, weights=weights, device=device)
        x, names = _images(images, m.preset, 0)
        tgt: int | str | None = int(target) if target is not None and target.strip().isdigit() else target
        kw: dict[str, Any] = {"area_mode": area_mode, "detail": detail}
        if steps is not None and not amortised:
            kw["steps"] = steps
        ex = MaskExplainer(m, seed=seed, **kw)
        res = compare_with_baselines(m, x, tgt, explainer=ex, amortised=amortised,
                                     amortised_steps=200 if steps is None else steps,
                                     baselines=BASELINES if baselines else (), seed=seed)
        written = write_mask_outputs(res, x, out, names=names, model=m)
    others = [r["method"] for r in res.rows if r["method"] != "mask"]
    typer.echo(f"{'image':<24}{'target':<22}{'kept':>8}{'top-1':>7}{'conf':>7}{'del':>7}{'ins':>7}"
               + "".join(f"{o[:10] + ' top-1':>18}" for o in others))
    for r in written["rows"]:
        typer.echo(f"{r['name'][:23]:<24}{r['target_name'][:21]:<22}{100 * r['kept_fraction']:>7.1f}%"
                   f"{'yes' if r['top1_kept'] else 'no':>7}{r['confidence']:>7.3f}{r['deletion_auc']:>7.3f}"
                   f"{r['insertion_auc']:>7.3f}"
                   + "".join(f"{'yes' if r[o + '_top1_kept'] else 'no':>18}" for o in others))
    typer.echo("means:")
    for r in res.rows:
        typer.echo(f"  {r['method']:<10} kept {100 * r['kept_fraction']:5.1f} %  top-1 kept "
                   f"{100 * r['top1_kept']:5.1f} %  confidence {r['confidence']:.3f}  deletion AUC "
                   f"{r['deletion_auc']:.3f}  insertion AUC {r['insertion_auc']:.3f}")
    typer.echo(f"table: {written['csv'].resolve()}")
    typer.echo(f"report: {written['html'].resolve()}  ({time.time() - t0:.0f} s)")


@app.command()
def sweep(
    out: Path = typer.Option(Path("sweep"), "--out", "-o",
                             help="Folder for sweep.csv, sweep.json and sweep.png."),
    method: str = typer.Option("face", help="Method with a λ to sweep (only 'face' has one)."),
    kl_weights: str = typer.Option("0,1e-5,1e-3,1e-1,10", "--kl-weights",
                                   help="Comma-separated λ values ≥ 0 (0 = plain NMF)."),
    model: str = typer.Option("efficientnet_lite0", help=_MODEL_HELP),
    weights: Optional[str] = typer.Option(None, help="Local weights file for the model (state_dict)."),  # noqa: UP045
    images: Optional[list[str]] = typer.Option(  # noqa: UP045
        None, "--images", help="Folder, file or glob of images (repeatable); default: the demo crops."),
    device: str = _DEVICE,
    layer: str = typer.Option("auto", help="Layer name, or 'auto'."),
    target: Optional[str] = typer.Option(  # noqa: UP045
        None, help="Class index or name (default: the class of 'chelsea' for the demo crops, the most "
                   "predicted class for --images, every class for --world; 'all' with --world)."),
    n_concepts: int = typer.Option(10, "--n-concepts", "-k", help="Number of concepts of every method."),
    crop: Optional[int] = typer.Option(  # noqa: UP045
        None, help="Cut the images into crops of this many pixels (default 112 for the demo photos, "
                   "0 = whole images for --images)."),
    world: bool = typer.Option(False, "--world",
                               help="Sweep on the ground-truth concept world and its trained CNN instead."),
    n_images: int = typer.Option(20, "--n-images", help="--world: images per class."),
    stability: bool = typer.Option(False, "--stability",
                                   help="Also measure stability (5 refits per row: slower)."),
    max_iter: Optional[int] = typer.Option(None, "--max-iter", help="Cap on FACE's iterations per fit."),  # noqa: UP045
    max_time: Optional[float] = typer.Option(  # noqa: UP045
        None, "--max-time", help="Cap on each FACE fit's wall time in seconds."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """FACE's λ sweep: MSE, KL, accuracy, C-Ins, C-Del, C-Gini, sparsity (and stability) against λ.

    ICE (plain NMF) and CRAFT are added as the λ = 0 reference rows. Writes OUT/sweep.csv, OUT/sweep.json and
    OUT/sweep.png (the λ curves) and prints the table and whether the KL term improves faithfulness.
    """
    import conceptlens as cl
    from conceptlens.errors import ParameterError
    from conceptlens.workflows import sweep as lambda_sweep

    t0 = time.time()
    with _reported():
        swept = [n for n in cl.decompose.available() if cl.decompose.get(n).sweep_param]
        if cl.decompose.get(method).sweep_param is None:
            param = cl.decompose.get(swept[0]).sweep_param
            raise ParameterError(
                f"only {' and '.join(swept)} has a λ ({param}) to sweep, got --method {method!r}; ICE (nmf) "
                f"and CRAFT are already in the sweep as the λ = 0 reference rows: use --method {swept[0]}")
        lams = lambda_sweep.parse_kl_weights(kl_weights)
        face_params: dict[str, object] = {}
        if max_iter is not None:
            face_params["max_iter"] = max_iter
        if max_time is not None:
            face_params["max_time"] = max_time
        dev = cl.models.resolve_device(device)
        if world:
            if images or dev.type != "cpu":
                raise ParameterError("--world sweeps the concept world's own images on the CPU: drop "
                                     "--images and --device (or --world)")
            data = lambda_sweep.world_sweep_data(n_per_class=n_images, target=target, seed=seed)
        else:
            data = lambda_sweep.real_sweep_data(model, weights=weights, images=images or None, layer=layer,
                                                target=target, crop=crop)
            if dev.type != "cpu":  # the activations are computed on the CPU; the fits run on dev
                h = cl.ModelSplit(cl.models.load(model, weights=weights, device=dev), data.config["layer"]).h
                data = dataclasses.replace(data, A=data.A.to(dev), head=h, craft_A=data.craft_A if
                                           data.craft_A is None else data.craft_A.to(dev))
        typer.echo(f"FACE λ sweep on {data.config['dataset']}: {data.A.shape[0]} images, layer "
                   f"{data.config['layer']}, target {', '.join(data.config['target_names'])}, "
                   f"k = {n_concepts}")
        res = lambda_sweep.run_sweep(data, lams, n_concepts, seed, with_stability=stability, progress=True,
                                     **face_params)
        paths = res.save(out)
    typer.echo("")
    typer.echo(res.table())
    typer.echo("claim (KL improves accuracy / C-Ins / C-Del without hurting much else): "
               f"{res.claim()['text']}")
    typer.echo(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}  ({time.time() - t0:.0f} s)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``conceptlens`` console script.

    A user error (any :class:`~conceptlens.ConceptLensError`, or a file that cannot be read or written)
    prints one line and exits with code 2; ``--debug`` anywhere on the command line shows the traceback.
    """
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG = "--debug" in args
    args = [a for a in args if a != "--debug"]
    from conceptlens.errors import ConceptLensError

    try:
        app(args=args, prog_name="conceptlens")
    except (ConceptLensError, OSError) as exc:  # one a command did not catch itself
        if _DEBUG:
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
