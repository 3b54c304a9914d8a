"""Make the pictures of the docs' "What is a concept" page (docs/img/*.png): ``make docs-figures``.

ICE (NMF, k = 10) on EfficientNet-Lite0 and the bundled photos, target "Egyptian cat", seed 0, one thread
(the same pictures on every machine); ``cl.report.write`` draws them and this script keeps a few, shrunk to
at most 900 px wide so that the repository stays small. The report draws its local explanations as inline
SVG; ``local_0.png`` is the same chart of the first image drawn by ``figures.local_figure``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

import conceptlens as cl

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
#: report picture → docs picture
KEEP = {"importance.png": "importance.png", "local_000.png": "local_0.png", "input_000.png": "input_0.png"}


def _local_png(ex: cl.ConceptExplainer, x: torch.Tensor, path: Path) -> None:
    """The report's local explanation of image 0 (concepts most important first) as a PNG at ``path``."""
    e = ex.explain(x[:1], maps="none")
    order = torch.argsort(ex.importance_, descending=True, stable=True).tolist()
    fig = cl.report.figures.local_figure(
        e.contributions[0, order], [f"concept {j}" for j in order], residual=float(e.residual[0]),
        bias=float(e.bias), logit=float(e.logits[0]), title=f"image 0: logit of {ex.target_name_}")
    cl.report.figures.save_png(fig, path)


def main(out: Path = OUT) -> list[Path]:
    """Fit, write the report to a temporary folder, keep the pictures of :data:`KEEP` and of the two most
    important concepts (``concept_top1.png``, ``concept_top2.png``) in ``out``."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = cl.models.load("efficientnet_lite0")
    split = cl.ModelSplit(model, layer="auto")
    x = cl.data.sample_images(model.preset)
    ex = cl.ConceptExplainer(split, method="nmf", n_concepts=10, seed=0).fit(x, target="Egyptian cat")
    top = torch.argsort(ex.importance_, descending=True)[:2].tolist()
    keep = {**KEEP, **{f"concept_{j:03d}.png": f"concept_top{r + 1}.png" for r, j in enumerate(top)}}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        cl.report.write(ex, x, tmp)
        _local_png(ex, x, Path(tmp, "img", "local_000.png"))
        for src, dst in keep.items():
            im = Image.open(Path(tmp, "img", src)).convert("RGB")
            if im.width > 900:
                im = im.resize((900, round(im.height * 900 / im.width)), Image.LANCZOS)
            im.save(out / dst, optimize=True)
            written.append(out / dst)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(f"wrote {p} ({p.stat().st_size // 1024} KiB)")
