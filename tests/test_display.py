"""Notebook display: each result's ``_repr_html_`` rendered and read back (numbers equal the object's,
pictures present and decodable, user text escaped), the figures Agg-safe, the layer contract kept."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from html import escape as html_escape

import numpy as np
import pytest
import torch
from PIL import Image

import conceptlens as cl
from conceptlens.report.display import num
from conceptlens.workflows.compare import COLUMNS, CompareResult
from helpers import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


@pytest.fixture()
def fitted(tiny_images: torch.Tensor) -> cl.ConceptExplainer:
    model = TinyNet()
    model.preset.classes[1] = "<b>cat</b> & co"  # a class name that must be escaped
    ex = cl.ConceptExplainer(cl.ModelSplit(model, "auto"), method="nmf", n_concepts=3, seed=0)
    return ex.fit(tiny_images, target=1)


def _pngs(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in
            re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


def test_unfitted_explainer_card_says_what_to_do(tiny) -> None:
    split = cl.ModelSplit(tiny, "auto")
    html = cl.ConceptExplainer(split, n_concepts=2)._repr_html_()
    assert "not fitted" in html and ".fit(x, target)" in html and f"<code>{split.layer}</code>" in html
    assert not _pngs(html)


def test_explainer_card_holds_the_explainers_numbers_and_one_prototype_per_concept(fitted, tiny_images):
    html = fitted._repr_html_()
    text = _text(html)
    fid = cl.metrics.fidelity(fitted, tiny_images)
    assert f"= {num(fid['fid_c'])}" in text and f"= {num(fid['fid_r'])}" in text
    assert "12 fit images" in text and fitted.split.layer in text and "TinyNet" in text and "k = 3" in text
    # the class name is escaped, never raw markup
    assert "&lt;b&gt;cat&lt;/b&gt; &amp; co (1)" in html and "<b>cat</b>" not in html
    # concepts most important first, each with its importance and weight as the object has them
    imp, w = fitted.importance_.tolist(), fitted.weights_.tolist()
    shown = [int(j) for j in re.findall(r"concept (\d+)<br>", html)]
    assert shown == sorted(range(3), key=lambda j: -imp[j])
    for j in range(3):
        assert f"concept {j}<br>importance {num(imp[j])}<br>weight {num(w[j])}" in html
    pics = _pngs(html)
    assert len(pics) == 3 and all(p.size == (16, 16) and p.mode == "RGB" for p in pics)
    # each prototype is the fit image where its concept scores highest, dimmed outside the concept
    top = fitted.fit_scores_.argmax(0)
    assert torch.equal(fitted.display_images_, tiny_images[top])


def test_loaded_explainer_card_has_no_prototypes_and_says_how_to_draw_them(fitted, tmp_path):
    back = cl.ConceptExplainer.load(fitted.save(tmp_path / "e.cl"), model=fitted.split.model)
    html = back._repr_html_()
    assert not _pngs(html) and "ex.plot_concepts(x)" in html and "cl.metrics.fidelity" in html
    with pytest.raises(cl.ConceptLensError, match=r"plot_concepts\(x\)"):
        back.plot_concepts()


def test_local_explanation_card_has_one_bar_chart_per_image_with_its_numbers(fitted, tiny_images):
    e = fitted.explain(tiny_images[:3])
    html = e._repr_html_()
    assert html.count('class="image"') == 3
    for i in range(3):
        line = (f"image {i}: logit {num(e.logits[i])} = Σ contributions {num(e.contributions[i].sum())} "
                f"+ residual {num(e.residual[i])} + bias {num(e.bias)}")
        assert line in html
    block = html.split('class="image"')[1]  # image 0: concepts sorted by |contribution|
    values = [float(v.replace("−", "-")) for v in re.findall(r'text-align:right">([^<]+)<', block)]
    c0 = e.contributions[0].tolist()
    expect = [c0[j] for j in sorted(range(3), key=lambda j: -abs(c0[j]))] + [float(e.residual[0]), e.bias]
    np.testing.assert_allclose(values, expect, rtol=1e-3, atol=1e-6)
    assert "exact (GAP + linear head)" in html
    # the residual and the bias are drawn in the neutral colour, the concepts by sign
    from conceptlens.report.figures import NEGATIVE, NEUTRAL, POSITIVE

    assert re.search(rf"residual</td><td[^>]*><span[^>]*><span[^>]*background:{NEUTRAL}", block)
    j0 = max(range(3), key=lambda j: abs(c0[j]))
    sign = POSITIVE if c0[j0] >= 0 else NEGATIVE
    assert re.search(rf"concept {j0}</td><td[^>]*><span[^>]*><span[^>]*background:{sign}", block)
    many = fitted.explain(tiny_images)._repr_html_()
    assert many.count('class="image"') == 8 and "and 4 more images" in many


def test_edit_card_holds_before_after_and_flips(fitted, tiny_images):
    r = fitted.edit(tiny_images, remove=[0, 1, 2])
    html = r._repr_html_()
    t = r.target
    for i in range(r.logits.shape[0]):
        row = f"<td[^>]*>{i}</td><td[^>]*>{re.escape(num(r.original[i, t]))}</td><td[^>]*>" \
              f"{re.escape(num(r.logits[i, t]))}</td><td[^>]*>{re.escape(num(r.delta_target[i]))}</td>"
        assert re.search(row, html)
    n_flip = int(r.flipped.sum())
    assert f"{n_flip} of 12" in html and html.count('class="flipped"') == n_flip
    assert "concept 0 removed, concept 1 removed, concept 2 removed" in html
    half = fitted.edit(tiny_images[:2], scale={1: 0.5})._repr_html_()
    assert "concept 1 × 0.5" in half
    # classes by name (escaped), index in brackets
    assert "&lt;b&gt;cat&lt;/b&gt; &amp; co (1)" in html and "<b>cat</b>" not in html
    names = fitted.classes
    for i, c in enumerate(r.original.argmax(1).tolist()):
        assert re.search(rf"<td[^>]*>{i}</td>(<td[^>]*>[^<]*</td>){{3}}<td[^>]*>(<strong[^>]*>)?"
                         rf"{re.escape(html_escape(names[c]))} \({c}\)", html)


def test_compare_card_marks_the_best_value_of_each_column_and_escapes_errors():
    base = {c: float("nan") for c in COLUMNS}
    rows = [{**base, "method": "nmf", "n_concepts": 3, "fid_c": 0.5, "fid_r": 0.2, "error": ""},
            {**base, "method": "pca", "n_concepts": 3, "fid_c": 0.75, "fid_r": 0.4, "error": ""},
            {**base, "method": "face", "n_concepts": 3, "fid_c": 1.0, "fid_r": 0.0, "error": "boom <x>"}]
    res = CompareResult(rows=rows)
    html = res._repr_html_()
    best = re.findall(r'<strong class="best">([^<]+)</strong>', html)
    assert best == ["0.200", "75\u00a0%"]  # row by row; the failed row's better numbers do not count
    assert res.best()["fid_c"] == ("pca", 0.75) and res.best()["fid_r"] == ("nmf", 0.2)
    assert "boom &lt;x&gt;" in html and "<x>" not in html
    assert "C-Gini" not in html  # columns without any value are left out


def test_figures_are_bare_agg_figures(fitted, tiny_images):
    from matplotlib.figure import Figure

    fig = fitted.plot_concepts()
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.images]) == 3
    fig2 = fitted.plot_concepts(tiny_images, n_prototypes=2, n_concepts=2)
    assert len([a for a in fig2.axes if a.images]) == 4 and len(fig2.axes) == 4
    e = fitted.explain(tiny_images[:2])
    fig3 = e.plot(1)
    buf = io.BytesIO()
    for f in (fig, fig2, fig3):
        f.savefig(buf, format="png")  # renders without pyplot or a display
    assert fig3.axes[0].get_title(loc="left") == "image 1, class 1"
    with pytest.raises(cl.ConceptLensError, match="image index"):
        e.plot(5)
    assert "matplotlib.pyplot" not in sys.modules or not __import__("matplotlib.pyplot").pyplot.get_fignums()


def test_explainer_layer_names_no_report_module_and_loads_it_only_on_display():
    code = ("import sys, conceptlens as cl, conceptlens.explainer, conceptlens.edit\n"
            "assert 'conceptlens.report.display' not in sys.modules and 'matplotlib' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("method", cl.decompose.available())
def test_every_method_gets_a_card_with_its_fidelity_and_prototypes(method, tiny, tiny_images):
    cls = cl.decompose.get(method)
    params = {**cls.quick_params, **({"patch_size": 8} if cls.fit_on == "crops" else {})}
    ex = cl.ConceptExplainer(cl.ModelSplit(tiny, "auto"), method=method, n_concepts=3, seed=0,
                             method_params=params).fit(tiny_images, target=1)
    html = ex._repr_html_()
    fid = cl.metrics.fidelity(ex, tiny_images)
    assert f"Fid<sub>c</sub> = {num(fid['fid_c'])}, Fid<sub>r</sub> = {num(fid['fid_r'])}" in html
    assert len(_pngs(html)) == 3
    torch.testing.assert_close(cl.interop.CaptumConcepts(ex).attribute(tiny_images).mean((2, 3)),
                               ex.explain(tiny_images).contributions, rtol=1e-5, atol=1e-6)
