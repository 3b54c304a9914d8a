"""Tests of the HTML report: files, escaping, layout invariants, and ICE's heatmap on known values."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import conceptlens as cl
from conceptlens.errors import ImageError, NotFittedError, ParameterError
from conceptlens.report import Section, figures

EVIL = "<script>alert('x')</script>"
CLASSES = ["cat", EVIL, "dog & co", "bird"]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, len(CLASSES))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.preset = cl.data.Preset(size=32, mean=(0.5,) * 3, std=(0.25,) * 3, classes=CLASSES)
        self.cl_name = "tiny<net>"
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _methods() -> list[str]:
    out = ["pca"]
    try:
        cl.decompose.get("nmf")
        out.append("nmf")
    except Exception:  # noqa: BLE001 - NMF may not have landed yet
        pass
    return out


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(7, 3, 32, 32, generator=g)


@pytest.fixture(scope="module", params=_methods())
def fitted(request: pytest.FixtureRequest, images: torch.Tensor) -> cl.ConceptExplainer:
    model = TinyNet()
    ex = cl.ConceptExplainer(cl.ModelSplit(model), method=request.param, n_concepts=3, progress=False)
    return ex.fit(images, target=1)  # the class whose name is a script tag


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "a" and a.get("href"):
            self.hrefs.append(str(a["href"]))


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


NAMES = ["chelsea", "a$b$c", "<b>bold</b>", "x" * 60, "five", "six", "seven"]


@pytest.fixture(scope="module")
def report(fitted: cl.ConceptExplainer, images: torch.Tensor,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return cl.report.write(fitted, images, out, names=NAMES, n_prototypes=5, n_local=3, progress=False)


# ------------------------------------------------------------------------------------------------ heatmap
def test_heatmap_overlay_keeps_exactly_the_pixels_above_half_the_range() -> None:
    img = np.stack([np.full((2, 3), 0.8), np.full((2, 3), 0.5), np.full((2, 3), 1.0)]).astype(np.float32)
    # min -1, max 4: min-max normalised (m + 1) / 5 > 0.5 ⇔ m > 1.5 (ICE's rule); m / max > 0.5 ⇔ m > 2
    m = np.array([[0.0, 1.0, 1.6], [2.2, 4.0, -1.0]], dtype=np.float32)
    out = figures.heatmap_overlay(img, m, threshold=0.5, dim=0.3)
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    keep = np.array([[False, False, True], [True, True, False]])
    pix = img.transpose(1, 2, 0)
    np.testing.assert_array_equal(out[keep], pix[keep])  # full value, bit for bit
    np.testing.assert_allclose(out[~keep], pix[~keep] * 0.3, rtol=1e-6)
    # the peak-relative rule is still there on request: 1.6 / 4 = 0.4 is out
    keep_max = np.array([[False, False, False], [True, True, False]])
    np.testing.assert_array_equal(figures.keep_mask(m, 0.5, normalise="max"), keep_max)
    # the boundary value exactly at the threshold is dimmed: (1.5 + 1) / 5 == 0.5
    edge = figures.keep_mask(np.array([[-1.0, 1.5, 4.0]]), 0.5)
    np.testing.assert_array_equal(edge, [[False, False, True]])


def test_signed_pca_map_region_is_judged_on_its_whole_range() -> None:
    # an entirely negative map (a PCA direction's sign is arbitrary): min-max still finds its high end,
    # where the peak rule has no region at all
    m = np.array([[-3.0, -2.0], [-1.0, -0.5]])
    np.testing.assert_array_equal(figures.keep_mask(m, 0.5), [[False, False], [True, True]])
    assert not figures.keep_mask(m, 0.5, normalise="max").any()
    # a shift of a map does not move its min-max region
    rng = np.random.default_rng(0)
    r = rng.normal(size=(6, 7))
    np.testing.assert_array_equal(figures.keep_mask(r, 0.3), figures.keep_mask(r + 5.0, 0.3))
    with pytest.raises(ParameterError, match="normalise"):
        figures.keep_mask(r, 0.3, normalise="l2")


def test_heatmap_overlay_torch_input_and_other_threshold() -> None:
    img = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    m = torch.arange(16, dtype=torch.float32).reshape(4, 4)  # max 15
    out = figures.heatmap_overlay(img, m, threshold=0.8, dim=0.0)
    keep = (m / 15 > 0.8).numpy()  # min 0: min-max equals m / max
    np.testing.assert_array_equal(out[keep], img.permute(1, 2, 0).numpy()[keep])
    assert (out[~keep] == 0).all()
    assert keep.sum() == 3  # 13, 14, 15


def test_heatmap_overlay_absent_concept_dims_everything() -> None:
    img = np.ones((3, 2, 2), dtype=np.float32)
    for m in (np.zeros((2, 2)), -np.ones((2, 2)), np.full((2, 2), np.nan)):
        np.testing.assert_allclose(figures.heatmap_overlay(img, m, dim=0.25), 0.25)


def test_heatmap_overlay_rejects_bad_input() -> None:
    with pytest.raises(ParameterError, match="differ in size"):
        figures.heatmap_overlay(np.ones((3, 4, 4)), np.ones((2, 2)))
    with pytest.raises(ParameterError, match=r"\[3, H, W\]"):
        figures.heatmap_overlay(np.ones((4, 4, 3)), np.ones((4, 4)))
    with pytest.raises(ParameterError, match="dim"):
        figures.heatmap_overlay(np.ones((3, 2, 2)), np.ones((2, 2)), dim=1.5)


def test_to_pictures_minmax_without_preset_and_denormalize_with_one() -> None:
    x = torch.tensor([-1.0, 0.0, 3.0]).view(1, 3, 1, 1).expand(2, 3, 1, 2).clone()
    x[1] = 5.0  # a constant image becomes mid-grey rather than dividing by zero
    p = figures.to_pictures(x, None)
    assert p.shape == (2, 1, 2, 3)
    np.testing.assert_allclose(p[0, 0, 0], [0.0, 0.25, 1.0])
    np.testing.assert_allclose(p[1], 0.5)
    preset = cl.data.Preset(size=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    q = figures.to_pictures(torch.tensor([[-2.0, 0.0, 1.0]]).view(1, 3, 1, 1), preset)
    np.testing.assert_allclose(q[0, 0, 0], [0.0, 0.5, 0.75])


def test_save_png_is_atomic_and_valid(tmp_path: Path) -> None:
    fig = figures.importance_figure(np.array([0.5, -0.2, 1.0]), ["a", "b$", "c"],
                                    ci_low=np.array([0.4, -0.3, 0.7]), ci_high=np.array([0.6, 0.0, 1.2]))
    from matplotlib.container import ErrorbarContainer

    assert any(isinstance(c, ErrorbarContainer) for c in fig.axes[0].containers)  # CIs are drawn
    # bars are sorted by importance, most important on top (y axis inverted)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["c", "a", r"b\$"]
    p = figures.save_png(fig, tmp_path / "sub" / "imp.png")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert sorted(q.name for q in (tmp_path / "sub").iterdir()) == ["imp.png"]  # no temp file left


def test_prototype_strip_pixels() -> None:
    pics = np.ones((2, 8, 8, 3), dtype=np.float32)
    maps = np.zeros((2, 8, 8), dtype=np.float32)
    maps[:, :, 4:] = 1.0  # right half is the region
    strip = figures.prototype_strip(pics, maps, ["a", "b" * 80], tile=16, gap=2)
    cap = strip.shape[0] - 16
    assert strip.dtype == np.uint8 and strip.shape[1] == 2 * 16 + 2
    tile = strip[cap:, :16]  # 8 px upscaled ×2 with nearest: region = columns 8..15
    assert (tile[:, :8] == round(0.3 * 255)).all()  # dimmed
    inner = tile[:, 12:]  # far from the boundary (outline is 2 px wide, none along the image border)
    assert (inner == 255).all()
    assert (tile[:, 8:10] == (255, 212, 0)).all()  # the outline
    assert (strip[cap:, 16:18] == 255).all()  # the white gap


def test_local_figure_draws_every_term() -> None:
    fig = figures.local_figure(np.array([1.0, -2.0]), ["c0", "c1"], residual=0.5, bias=0.25, logit=-0.25)
    heights = [r.get_width() for r in fig.axes[0].patches]
    assert heights == pytest.approx([1.0, -2.0, 0.5, 0.25, -0.25])
    values = [t.get_text() for t in fig.axes[1].get_yticklabels()]  # the right-hand column of values
    assert values == ["+1", "\u22122", "+0.5", "+0.25", "\u22120.25"]


# ------------------------------------------------------------------------------------------------ report
def test_report_files_exist_and_images_are_pngs(report: Path) -> None:
    assert report.name == "index.html" and report.is_file()
    html = report.read_text("utf-8")
    p = _parse(html)
    assert len(p.imgs) == 1 + 3 + 3  # importance, one strip per concept, a thumbnail per local
    locals_ = re.findall(r'<article class="card" id="image-\d+">(.*?)</article>', html, flags=re.S)
    assert len(locals_) == 3
    for card in locals_:  # the bars: one inline SVG chart, no PNG
        assert card.count("<svg") == 1 and card.count("<img") == 1 and 'role="img"' in card
    assert not list((report.parent / "img").glob("local_*"))
    for a in p.imgs:
        src = str(a["src"])
        assert not src.startswith(("http:", "https:", "//", "/")), src
        f = report.parent / src
        assert f.is_file(), src
        with Image.open(f) as im:
            im.verify()
            assert im.format == "PNG"
        with Image.open(f) as im:
            assert (im.width, im.height) == (int(a["width"]), int(a["height"]))
        assert a.get("alt")
    assert not re.search(r"(src|href)=\"?(https?:)?//", html)  # self-contained
    assert "<script" not in html.lower()
    assert not [q.name for q in report.parent.rglob(".*")]  # no temp file left behind


def test_report_escapes_user_text(report: Path, fitted: cl.ConceptExplainer) -> None:
    import xml.etree.ElementTree as ET

    html = report.read_text("utf-8")
    assert fitted.target_name_ == EVIL
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == 3
    for svg, name in zip(svgs, NAMES, strict=False):  # escaped, and well-formed XML
        root = ET.fromstring(svg)
        assert root.get("aria-label") == f"Contributions of the concepts to the {EVIL} logit on {name}"
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html  # the target name, escaped
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "tiny&lt;net&gt;" in html and "<net>" not in html
    assert "dog & co" not in html  # another class name never appears unescaped (nor at all unless predicted)


def test_report_has_every_concept_sorted_by_importance(report: Path, fitted: cl.ConceptExplainer,
                                                        images: torch.Tensor) -> None:
    html = report.read_text("utf-8")
    ids = _parse(html).ids
    k = fitted.n_concepts
    order = torch.argsort(-fitted.importance_, stable=True).tolist()
    assert [i for i in ids if i.startswith("concept-")] == [f"concept-{j}" for j in order]
    for rank, j in enumerate(order, 1):
        assert (report.parent / "img" / f"concept_{j:03d}.png").is_file()
        block = html.split(f'id="concept-{j}"')[1].split("</article>")[0]
        assert f"#{rank} by importance" in block
        # prototypes are the 5 highest-scoring images, best first
        e = fitted.explain(images)
        best = torch.argsort(-e.scores[:, j], stable=True)[:5].tolist()
        listed = re.findall(r'<li><span class="n">\d+\.</span> (.*?) — score', block)
        import html as html_mod

        assert [html_mod.unescape(s) for s in listed] == [NAMES[i] for i in best]
    assert len({i for i in ids if i.startswith("concept-")}) == k
    for nav in ("#metrics", "#importance", "#concepts", "#local"):
        assert nav in _parse(html).hrefs


def test_report_strip_shows_the_heatmap_of_each_prototype(report: Path, fitted: cl.ConceptExplainer,
                                                          images: torch.Tensor) -> None:
    e = fitted.explain(images)
    pics = figures.to_pictures(images, fitted.split.preset)
    for j in range(fitted.n_concepts):
        strip = np.asarray(Image.open(report.parent / "img" / f"concept_{j:03d}.png").convert("RGB"))
        best = torch.argsort(-e.scores[:, j], stable=True)[:5].tolist()
        assert strip.shape[1] == 5 * 224 + 4 * 6
        for r, i in enumerate(best):
            ov = figures.heatmap_overlay(pics[i].transpose(2, 0, 1), e.maps[i, j])
            expect = np.clip(np.rint(ov * 255), 0, 255).astype(np.uint8).repeat(7, 0).repeat(7, 1)  # 32 → 224
            tile = strip[-224:, r * 230: r * 230 + 224]
            body = (tile != (255, 212, 0)).any(-1)  # all but the outline
            assert (tile[body] == expect[body]).all(-1).mean() > 0.99
            assert body.mean() > 0.5


def test_report_local_equation_adds_up(report: Path, fitted: cl.ConceptExplainer,
                                       images: torch.Tensor) -> None:
    html = report.read_text("utf-8")
    e = fitted.explain(images[:3])
    eqs = re.findall(r'<p class="equation">(.*?)</p>', html, flags=re.S)
    assert len(eqs) == 3
    for i, eq in enumerate(eqs):
        assert "Σ contributions + residual + bias = logit" in eq
        nums = [float(s.replace("−", "-")) for s in re.findall(r"[−-]?\d+\.\d{3}", eq.split(":", 1)[1])]
        c, r, b, total = nums[:4]
        signs = re.findall(r"\s([+−])\s", eq.split(":", 1)[1])
        r = r if signs[0] == "+" else -r
        b = b if signs[1] == "+" else -b
        assert c == pytest.approx(float(e.contributions[i].sum()), abs=1.5e-3)
        assert r == pytest.approx(float(e.residual[i]), abs=1.5e-3)
        assert c + r + b == pytest.approx(total, abs=3e-3)
        assert total == pytest.approx(float(e.logits[i]), abs=3e-3)
        assert "model's logit is" not in eq  # a GAP + linear head decomposes exactly


def test_report_metrics_readings(report: Path, fitted: cl.ConceptExplainer, images: torch.Tensor) -> None:
    import html as html_mod

    html = html_mod.unescape(report.read_text("utf-8"))
    m = cl.metrics.evaluate(fitted, images)
    assert f"keep the model's top-1 class on {100 * m['fid_c']:.0f}\u00a0% of the images" in html
    for label in ("fid_c", "fid_r", "reconstruction error", "sparsity"):
        assert label in html


def test_metric_rows_known_and_unknown() -> None:
    rows = cl.report.metric_rows({"fid_c": 0.92, "custom": 1.5, "fid_r": float("nan"), "note": "n/a"}, "cat")
    assert rows[0]["value"] == "92\u00a0%"
    assert rows[0]["reading"] == ("The concepts keep the model's top-1 class on 92\u00a0% of the images "
                                  "(higher is better).")
    assert rows[1] == {"key": "custom", "name": "custom", "value": "1.5", "reading": ""}
    assert rows[2]["reading"] == "not available" and rows[3]["value"] == "n/a"


def test_report_extra_sections_and_given_metrics(fitted: cl.ConceptExplainer, images: torch.Tensor,
                                                 tmp_path: Path) -> None:
    pic = np.zeros((8, 8, 3), dtype=np.float32)
    s1 = Section("Concept tree <CRAFT>", '<p class="x">tree</p><img src="img/tree.png" alt="tree">',
                 images={"tree.png": pic})
    s2 = Section("Concept tree <CRAFT>", "<p>again</p>", images={"lam.png": figures.local_figure(
        np.ones(2), ["a", "b"], residual=0.0, bias=0.0, logit=2.0)})
    path = cl.report.write(fitted, images[:2], tmp_path, n_local=0, metrics={"fid_c": 1.0},
                           title="My & title", extra_sections=[s1, s2], progress=False)
    html = path.read_text("utf-8")
    p = _parse(html)
    assert "s-concept-tree-craft" in p.ids and "s-concept-tree-craft-2" in p.ids
    assert '<p class="x">tree</p>' in html  # trusted markup inserted as is
    assert "Concept tree &lt;CRAFT&gt;" in html  # the title is escaped
    assert "<title>My &amp; title</title>" in html
    assert "#local" not in p.hrefs and "image-0" not in p.ids
    assert (tmp_path / "img" / "tree.png").is_file() and (tmp_path / "img" / "lam.png").is_file()
    assert "fid_r" not in html  # only the metrics given are shown
    # n_prototypes larger than N is capped at N
    assert len(re.findall(r"</span> image \d — score", html)) == 2 * fitted.n_concepts


def test_report_errors(fitted: cl.ConceptExplainer, images: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="7 image names"):
        cl.report.write(fitted, images, tmp_path, names=["a", "b"])
    with pytest.raises(ParameterError, match="n_prototypes"):
        cl.report.write(fitted, images, tmp_path, n_prototypes=0)
    with pytest.raises(ParameterError, match="name.png"):
        cl.report.write(fitted, images, tmp_path,
                        extra_sections=[Section("t", "", images={"../x.png": None})])
    with pytest.raises(ImageError):
        cl.report.write(fitted, images[0], tmp_path)
    with pytest.raises(ParameterError, match="same images"):
        cl.report.write(fitted, images, tmp_path, A=fitted.activations(images[:2]))
    unfitted = cl.ConceptExplainer(fitted.split, method="pca", n_concepts=2)
    with pytest.raises(NotFittedError, match="fit"):
        cl.report.write(unfitted, images, tmp_path)
    assert not (tmp_path / "index.html").exists()


# ---------------------------------------------------------------------------------------------- concept edits
@pytest.fixture(scope="module")
def eddp_report(images: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[cl.ConceptExplainer, Path]:
    ex = cl.ConceptExplainer(cl.ModelSplit(TinyNet()), method="eddp", n_concepts=3, progress=False,
                             method_params={"max_iter": 20, "polish_iter": 5}).fit(images, target=1)
    out = tmp_path_factory.mktemp("eddp_report")
    return ex, cl.report.write(ex, images, out, names=NAMES, n_local=3, progress=False)


def _edit_rows(html: str) -> list[tuple[int, int, str]]:
    """(rank, concept, mean Δ text) of each row of the concept-edits table."""
    table = re.search(r'<table class="edits">(.*?)</table>', html, re.S)
    assert table, "no concept-edits table"
    return [(int(r), int(j), v) for r, j, v in re.findall(
        r'<tr><td class="num">(\d+)</td><td class="name"><a href="#concept-(\d+)">concept \d+</a></td>'
        r'<td class="num">[^<]*</td><td class="num(?: neg)?">([^<]*)</td>', table.group(1))]


def test_report_concept_edits_section_for_eddp(eddp_report: tuple[cl.ConceptExplainer, Path],
                                               images: torch.Tensor) -> None:
    ex, path = eddp_report
    html = path.read_text("utf-8")
    p = _parse(html)
    assert "concept-edits" in p.ids and "#concept-edits" in p.hrefs  # a section with a contents entry
    png = path.parent / "img" / "edits.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
    rows = _edit_rows(html)
    k = ex.n_concepts
    order = [int(j) for j in torch.argsort(-ex.importance_, stable=True)]
    assert [r[0] for r in rows] == list(range(1, k + 1)) and [r[1] for r in rows] == order
    for _, j, text in rows:  # the numbers are the explainer's own edit of each concept
        mean = float(ex.edit(images, remove=[j]).delta_target.mean())
        assert text == f"{mean:+.3g}".replace("-", "−")
    # every link of the table points at a concept card, every prototype picture exists
    section = html[html.index('id="concept-edits"'):]
    for j in range(k):
        assert f'href="#concept-{j}"' in section and f"concept-{j}" in p.ids
        assert f'src="img/concept_{j:03d}.png"' in section
        assert (path.parent / "img" / f"concept_{j:03d}.png").is_file()
    # per-image columns for the n_local = 3 first images, names escaped; the class name too
    assert "Δ chelsea" in section and "Δ &lt;b&gt;bold&lt;/b&gt;" in section and "Δ five" not in section
    assert EVIL not in html and "&lt;script&gt;" in section


def test_report_concept_edits_off_by_default_for_other_methods(fitted: cl.ConceptExplainer,
                                                               images: torch.Tensor, tmp_path: Path) -> None:
    path = cl.report.write(fitted, images[:3], tmp_path / "a", n_local=1, metrics={"fid_c": 1.0},
                           progress=False)
    assert 'id="concept-edits"' not in path.read_text("utf-8")
    assert not (tmp_path / "a" / "img" / "edits.png").exists()
    path = cl.report.write(fitted, images[:3], tmp_path / "b", n_local=1, metrics={"fid_c": 1.0},
                           edit_sections=True, progress=False)
    html = path.read_text("utf-8")
    rows = _edit_rows(html)
    assert sorted(r[1] for r in rows) == list(range(fitted.n_concepts))
    assert "part of the reconstruction" in html and (tmp_path / "b" / "img" / "edits.png").is_file()


def test_edit_figure_draws_bars_and_dots() -> None:
    d = np.array([[-1.0, 0.5], [-3.0, 1.5]])
    fig = figures.edit_figure(d, ["a", "b$"])
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx([-2.0, 1.0])  # the means, top first
    offsets = ax.collections[0].get_offsets()
    assert sorted(np.asarray(offsets)[:, 0].tolist()) == sorted(d.reshape(-1).tolist())
    with pytest.raises(ParameterError, match="labels"):
        figures.edit_figure(d, ["a"])
    with pytest.raises(ParameterError, match="k concepts"):
        figures.edit_figure(np.ones(3), ["a", "b", "c"])


def test_pictures_are_written_in_the_background_with_their_sizes(tmp_path: Path) -> None:
    from PIL import Image

    from conceptlens.errors import ParameterError
    from conceptlens.report.html import _Pictures

    (tmp_path / "img").mkdir()
    pics = _Pictures(tmp_path)
    rng = np.random.default_rng(0)
    descr = [pics.add(f"p{i}.png", rng.random((20 + i, 30, 3)), f"alt {i}") for i in range(3)]
    pics.wait()
    for i, dsc in enumerate(descr):
        with Image.open(tmp_path / dsc["src"]) as im:
            assert im.size == (dsc["width"], dsc["height"]) == (30, 20 + i)
    bad = _Pictures(tmp_path)
    bad.add("ok.png", rng.random((4, 4, 3)), "")
    bad.add("bad.png", rng.random((4, 4)), "")  # not [H, W, 3]: the writer's error is raised at the end
    with pytest.raises(ParameterError, match="picture must be"):
        bad.wait()
    assert (tmp_path / "img" / "ok.png").is_file()
