"""The crop grid's border-aligned patches (``border``), the channels-last pass and the crop extraction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import conceptlens as cl
from conceptlens.errors import ParameterError
from conceptlens.io.crops import (
    border_patches,
    channels_last_model,
    crop_activations,
    crops,
    grid_size,
    stream_crop_activations,
)

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


def _img(n: int, h: int, w: int) -> torch.Tensor:
    return torch.arange(n * 3 * h * w, dtype=torch.float32).reshape(n, 3, h, w)


def test_border_false_is_the_peers_unfold_grid() -> None:
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    p, idx, boxes = crops(x, 64, border=False)
    # Xplique's CraftTorch: F.unfold(x, 64, stride=int(0.8 * 64)), patches image-major then row-major
    ref = F.unfold(x, kernel_size=64, stride=51).transpose(1, 2).reshape(-1, 3, 64, 64)
    assert p.shape == (32, 3, 64, 64) and torch.equal(p, ref)
    assert sorted(set(boxes[:, 0].tolist())) == [0, 51, 102, 153] and idx.tolist() == [0] * 16 + [1] * 16


def test_auto_leaves_out_border_patches_that_add_more_than_a_quarter() -> None:
    assert grid_size((224, 224), 64) == 25 and grid_size((224, 224), 64, border="auto") == 16  # +56 %
    assert grid_size((224, 224), 64, border=False) == 16
    assert not border_patches((224, 224), (64, 64), (51, 51), "auto")
    # 10 × 14, patch 4, stride 3: one border column, 3 × 5 = 15 against 3 × 4 = 12 (+25 %): kept
    assert border_patches((10, 14), (4, 4), (3, 3), "auto")
    assert crops(_img(1, 10, 14), 4, 3, border="auto")[0].shape[0] == 15
    # 11 × 15, patch 4, stride 3: one border row and column, 4 × 5 = 20 against 12: left out
    assert crops(_img(1, 11, 15), 4, 3, border="auto")[0].shape[0] == 12
    # a grid that already covers the image has no border patch to add, whatever border says
    assert grid_size((10, 10), 4, 3, border=True) == grid_size((10, 10), 4, 3, border=False) == 9
    with pytest.raises(ParameterError, match="border"):
        crops(_img(1, 10, 14), 4, 3, border="yes")


@settings(max_examples=40, deadline=None)
@given(h=st.integers(4, 40), w=st.integers(4, 40), p=st.integers(1, 4), s=st.integers(1, 6),
       border=st.sampled_from([True, False, "auto"]))
def test_grid_size_counts_the_crops_and_border_true_covers(h: int, w: int, p: int, s: int,
                                                           border: bool | str) -> None:
    _, _, boxes = crops(_img(1, h, w), p, s, border=border)
    assert boxes.shape[0] == grid_size((h, w), p, s, border)
    covered = torch.zeros(h, w, dtype=torch.bool)
    for y0, x0, y1, x1 in boxes.tolist():
        covered[y0:y1, x0:x1] = True
    resolved = border_patches((h, w), (p, p), (s, s), border)
    if resolved and s <= p:  # a stride longer than the patch leaves gaps between patches anyway
        assert bool(covered.all())
    n_reg = (len(range(0, h - p + 1, s))) * len(range(0, w - p + 1, s))
    assert boxes.shape[0] >= n_reg and (resolved or boxes.shape[0] == n_reg)
    if border == "auto" and resolved:
        assert boxes.shape[0] <= 1.25 * n_reg


def test_channels_last_model_restores_the_model_exactly(tiny) -> None:  # noqa: ANN001
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    split = cl.ModelSplit(tiny, "auto")
    with channels_last_model(split) as fmt:
        assert fmt == torch.channels_last
        w = tiny.features[0].weight
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous(), k
    with channels_last_model(split, on=False) as fmt:
        assert fmt == torch.contiguous_format and tiny.features[0].weight.is_contiguous()
    # a model already channels-last is left so
    tiny.to(memory_format=torch.channels_last)
    with channels_last_model(split):
        pass
    assert tiny.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_crop_activations_default_grid_layout_and_plain_outputs(tiny) -> None:  # noqa: ANN001
    split = cl.ModelSplit(tiny, "auto")
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # patch 6, stride 4: 0, 4, 8 and the border 10: 4 × 4 = 16 against 9 (+78 %): "auto" leaves them out
    rows, idx, boxes, pred = crop_activations(split, x, 6, 4)
    assert rows.shape[0] == 3 * 9 and boxes[:, 0].max() == 8
    rows_b, _, boxes_b, pred_b = crop_activations(split, x, 6, 4, border=True)
    assert rows_b.shape[0] == 3 * 16 and boxes_b[:, 0].max() == 10
    # the same numbers as g on the crops, channels-last or not, and the outputs are ordinary tensors
    patches, _, _ = crops(x, 6, 4, out_size=16, border=False)
    A = split.g(patches)
    rows_c, _, _, pred_c = crop_activations(split, x, 6, 4, channels_last=False, crops_per_pass=5)
    torch.testing.assert_close(rows, A.mean((1, 2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows_c, A.mean((1, 2)), rtol=0, atol=1e-6)
    assert torch.equal(pred, split.h(A).argmax(1)) and torch.equal(pred_c, pred)
    for t in (rows, idx, boxes, pred):
        assert not t.is_inference()
    rows.mul_(2)  # the fit may update them in place
    assert tiny.features[0].weight.is_contiguous()
    got: list[torch.Tensor] = []
    i2, b2, p2 = stream_crop_activations(split, [x[:2], x[2:]], 6, 4, sink=got.append, border=True)
    assert torch.equal(torch.cat(got), rows_b) and torch.equal(b2, boxes_b)
    assert i2.tolist() == [i for i in range(3) for _ in range(16)] and torch.equal(p2, pred_b)


def test_craft_border_parameter() -> None:
    from conceptlens.decompose.craft import CRAFT

    assert CRAFT().border == "auto" and CRAFT(border=True).get_params()["border"] is True
    with pytest.raises(ParameterError, match="border"):
        CRAFT(border="on")
