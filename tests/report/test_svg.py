"""The report's inline SVG chart of a local explanation: well-formed XML, bars to scale, text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from conceptlens.errors import ConceptLensError, ParameterError
from conceptlens.report import figures
from conceptlens.report.svg import local_svg

NS = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script>&\"'"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{NS}svg"
    return root


def _group(root: ET.Element, cls: str) -> ET.Element:
    (g,) = [e for e in root.iter(f"{NS}g") if e.get("class") == cls]
    return g


def _texts(root: ET.Element, cls: str) -> list[str]:
    return [str(t.text) for t in _group(root, cls).iter(f"{NS}text")]


def _zero(root: ET.Element) -> float:
    (line,) = [e for e in root.iter(f"{NS}line") if e.get("class") == "zero"]
    assert line.get("x1") == line.get("x2")
    return float(str(line.get("x1")))


def _bars(root: ET.Element) -> list[tuple[float, float, float, str]]:
    """(x, y, width, fill) of each bar, in document order."""
    return [(float(str(r.get("x"))), float(str(r.get("y"))), float(str(r.get("width"))), str(r.get("fill")))
            for r in _group(root, "bars").iter(f"{NS}rect")]


@pytest.mark.parametrize("c", [
    np.array([1.0, -2.0, 0.3]),
    np.array([3e-4, 2.5, 0.0, -1e-3]),
    np.array([-5.0, -0.25]),  # all negative: the logit too
])
def test_bars_are_to_scale_on_their_side_of_the_zero_line(c: np.ndarray) -> None:
    residual, bias = 0.5, -0.125
    logit = float(c.sum() + residual + bias)
    svg = local_svg(c, [f"c{j}" for j in range(len(c))], residual=residual, bias=bias, logit=logit, title="t")
    root = _parse(svg)
    vals = np.r_[c, residual, bias, logit]
    bars, zero = _bars(root), _zero(root)
    assert len(bars) == len(c) + 3
    ys = [y for _, y, _, _ in bars]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)  # top to bottom, in the given order
    assert ys[len(c)] - ys[len(c) - 1] > ys[1] - ys[0]  # the gap before the residual
    widths = np.array([w for _, _, w, _ in bars])
    big = int(np.argmax(np.abs(vals)))
    scale = widths[big] / abs(vals[big])
    np.testing.assert_allclose(widths, np.abs(vals) * scale, rtol=1e-6, atol=0)
    for (x, _, w, _), v in zip(bars, vals, strict=True):
        if v > 0:
            assert x == pytest.approx(zero, abs=1e-3)
        elif v < 0:
            assert x + w == pytest.approx(zero, abs=1e-3)
    # the logit's bar is the value passed (on the same scale as every other bar), in the total's colour
    assert widths[-1] == pytest.approx(abs(logit) * scale, rel=1e-6) and bars[-1][3] == figures.TOTAL
    assert [f for *_, f in bars[-3:-1]] == [figures.NEUTRAL] * 2
    assert [f for *_, f in bars[:len(c)]] == [figures.POSITIVE if v >= 0 else figures.NEGATIVE for v in c]
    # 4 % padding each side of the range, as local_figure's x limits
    (axes,) = [e for e in root.iter(f"{NS}path") if e.get("class") == "axes"]
    d = str(axes.get("d"))
    left, right = float(d[1:].split()[0]), float(d.rsplit("H", 1)[1])
    lo, hi = min(vals.min(), 0.0), max(vals.max(), 0.0)
    assert (right - left) / scale == pytest.approx((hi - lo) * 1.08, rel=1e-5)


def test_labels_values_title_and_accessible_name() -> None:
    c = np.array([1.0, -2.0])
    svg = local_svg(c, ["c0", "c1"], residual=0.5, bias=0.25, logit=-0.25, title="chelsea: logit of cat",
                    alt="Contributions of the concepts to the cat logit on chelsea")
    root = _parse(svg)
    assert _texts(root, "labels") == ["c0", "c1", "residual", "bias", "logit (sum)"]
    assert _texts(root, "values") == ["+1", "\u22122", "+0.5", "+0.25", "\u22120.25"]  # as local_figure's
    (title,) = [e for e in root.iter(f"{NS}text") if e.get("class") == "title"]
    assert title.text == "chelsea: logit of cat"
    (note,) = [e for e in root.iter(f"{NS}text") if e.get("class") == "xlabel"]
    assert note.text == "contribution to the logit"
    assert root.get("role") == "img"
    assert root.get("aria-label") == root.findtext(f"{NS}title") == \
        "Contributions of the concepts to the cat logit on chelsea"
    w, h = int(str(root.get("width"))), int(str(root.get("height")))
    assert root.get("viewBox") == f"0 0 {w} {h}" and w > 300 and h > 5 * 22
    assert "system-ui" in str(root.get("font-family"))
    assert "\u22122" in _texts(root, "ticks") and "0" in _texts(root, "ticks")
    (sep,) = [e for e in root.iter(f"{NS}line") if e.get("class") == "separator"]
    ys = [float(str(t.get("y"))) for t in _group(root, "labels").iter(f"{NS}text")]
    assert ys[1] < float(str(sep.get("y1"))) < ys[2] and sep.get("stroke-dasharray")


def test_user_text_appears_only_escaped() -> None:
    svg = local_svg(torch.tensor([0.5, -0.5]), [EVIL, "dog & co"], residual=0.0, bias=0.0, logit=0.0,
                    title=f"{EVIL}: logit of {EVIL}", alt=f"on {EVIL}")
    assert "<script" not in svg and "&\"'" not in svg and "dog & co" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;" in svg and "dog &amp; co" in svg
    root = _parse(svg)
    assert _texts(root, "labels")[:2] == [EVIL, "dog & co"]  # read back as the text itself
    assert root.get("aria-label") == f"on {EVIL}"
    assert [e.tag for e in root.iter()].count(f"{NS}script") == 0
    # control characters (not allowed in XML even escaped) do not break the markup
    _parse(local_svg([1.0], ["a\x01b"], residual=0.0, bias=0.0, logit=1.0, title="\x00"))


def test_long_labels_and_title_are_shortened_to_fit() -> None:
    long = "a concept with a very long name " * 4
    root = _parse(local_svg([1.0, 2.0], [long, "short"], residual=0.0, bias=0.0, logit=3.0, title=long * 3))
    label = _texts(root, "labels")[0]
    assert label.endswith("…") and long.startswith(label[:-1]) and len(label) < len(long)
    assert figures._width(label, 16) <= 0.55 * int(str(root.get("width")))
    (title,) = [e for e in root.iter(f"{NS}text") if e.get("class") == "title"]
    assert str(title.text).endswith("…")
    assert figures._width(str(title.text), 16) <= int(str(root.get("width")))
    assert _texts(root, "labels")[1] == "short"
    assert 'class="title"' not in local_svg([1.0], ["x"], residual=0.0, bias=0.0, logit=1.0)  # none given


def test_zero_values_and_no_concepts_draw() -> None:
    root = _parse(local_svg(np.zeros(2), ["a", "b"], residual=0.0, bias=0.0, logit=0.0))
    assert [w for _, _, w, _ in _bars(root)] == [0.0] * 5
    root = _parse(local_svg(np.zeros(0), [], residual=1.0, bias=-1.0, logit=0.0))
    assert len(_bars(root)) == 3


def test_invalid_input_raises_the_library_error() -> None:
    with pytest.raises(ParameterError, match="got 1 labels for 2 contributions"):
        local_svg([1.0, 2.0], ["a"], residual=0.0, bias=0.0, logit=3.0)
    with pytest.raises(ParameterError, match="got 1 labels for 2 contributions"):  # the same as local_figure
        figures.local_figure([1.0, 2.0], ["a"], residual=0.0, bias=0.0, logit=3.0)
    with pytest.raises(ParameterError, match=r"finite.* b, logit: check the model"):
        local_svg([1.0, float("nan")], ["a", "b"], residual=0.0, bias=0.0, logit=float("inf"))
    with pytest.raises(ParameterError, match="numeric array"):
        local_svg(["x"], ["a"], residual=0.0, bias=0.0, logit=0.0)
    with pytest.raises(ConceptLensError, match="must be numbers"):
        local_svg([1.0], ["a"], residual="big", bias=0.0, logit=0.0)  # type: ignore[arg-type]


def test_the_png_chart_and_the_svg_chart_share_their_rows_and_checks() -> None:
    from conceptlens.errors import ParameterError
    from conceptlens.report import figures

    vals, rows, colors = figures.local_terms([1.0, -2.0], ["a", "b"], 0.5, 0.25, -0.25)
    assert vals.tolist() == [1.0, -2.0, 0.5, 0.25, -0.25]
    assert rows == ["a", "b", "residual", "bias", "logit (sum)"]
    assert colors == [figures.POSITIVE, figures.NEGATIVE, figures.NEUTRAL, figures.NEUTRAL, figures.TOTAL]
    for draw in (figures.local_figure, local_svg):  # one check for both renderers
        with pytest.raises(ParameterError, match="finite"):
            draw([1.0, float("nan")], ["a", "b"], residual=0.0, bias=0.0, logit=1.0)
