"""Pixel metrics of masks and saliency maps: deletion / insertion AUC and binarisation at a kept area."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.errors import ParameterError
from conceptlens.metrics.pixels import binarize_at, pixel_auc, pixel_deletion_auc, pixel_insertion_auc


class RegionFraction(nn.Module):
    """Two classes; p(class 0) = fraction of non-zero pixels inside a fixed box (the whole image if None)."""

    def __init__(self, box: tuple[int, int, int, int] | None = None) -> None:
        super().__init__()
        self.box = box
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nz = (x.abs().sum(1) > 0).float()
        if self.box is not None:
            r0, r1, c0, c1 = self.box
            nz = nz[:, r0:r1, c0:c1]
        f = nz.mean((1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([f.log(), (1 - f).log()], 1) + 0 * self.dummy


pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


# ----------------------------------------------------------------------------------------- metrics
def test_deletion_and_insertion_on_a_model_that_counts_salient_pixels(positive_images: torch.Tensor) -> None:
    model = RegionFraction(box=(4, 6, 10, 12))  # 4 of 256 pixels decide
    good = torch.zeros(3, 1, 16, 16)
    good[:, :, 4:6, 10:12] = 1
    dele = pixel_deletion_auc(model, positive_images, good, 0, steps=32)
    ins = pixel_insertion_auc(model, positive_images, good, 0, steps=32)
    assert bool((dele < 0.02).all()) and bool((ins > 0.98).all())
    # the reverse order is the worst possible
    assert bool((pixel_deletion_auc(model, positive_images, -good, 0, steps=32) > 0.98).all())
    assert bool((pixel_insertion_auc(model, positive_images, -good, 0, steps=32) < 0.02).all())


def test_deletion_and_insertion_of_a_linear_model_are_one_half(positive_images: torch.Tensor) -> None:
    # p = fraction of non-zero pixels: the curves are straight lines whatever the order, AUC = 1/2 exactly
    sal = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    model = RegionFraction()
    dele, curve = pixel_deletion_auc(model, positive_images, sal, 0, steps=32, return_curve=True)
    torch.testing.assert_close(curve[0], torch.linspace(1, 0, 33), atol=1e-5, rtol=0)
    torch.testing.assert_close(dele, torch.full((3,), 0.5), atol=1e-5, rtol=0)
    ins = pixel_insertion_auc(model, positive_images, sal, 0, steps=32)
    torch.testing.assert_close(ins, torch.full((3,), 0.5), atol=1e-5, rtol=0)


def test_binarize_at_keeps_exactly_the_requested_pixels() -> None:
    sal = torch.rand(4, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    b = binarize_at(sal, torch.tensor([0.0, 0.1, 0.25, 1.0]))
    assert b.sum((1, 2, 3)).tolist() == [0, 10, 25, 100]
    thr = sal.reshape(4, -1).sort(1, descending=True).values[1, 9]
    assert torch.equal(b[1, 0] > 0, sal[1, 0] >= thr)
    with pytest.raises(ParameterError):
        binarize_at(sal, 1.5)


@pytest.fixture()
def fitted(tiny, tiny_images):
    split = cl.ModelSplit(tiny, "auto")
    return cl.ConceptExplainer(split, method="nmf", n_concepts=4, seed=0).fit(tiny_images, target=1)


def test_pixel_auc_scores_each_map_as_pixel_deletion_auc_does(fitted, tiny, tiny_images):
    x = tiny_images[:3]
    maps = fitted.explain(x).maps  # [3, 4, 16, 16]
    dele = pixel_auc(tiny, x, maps, 1, steps=8)
    ins = pixel_auc(tiny, x, maps, 1, kind="insertion", steps=8)
    assert dele.shape == ins.shape == (3, 4)
    ref = pixel_deletion_auc(tiny, x, maps[:, 2:3], 1, steps=8)
    assert torch.allclose(dele[:, 2], torch.as_tensor(ref))
    assert bool(((dele >= 0) & (dele <= 1)).all())
    with pytest.raises(ParameterError):
        pixel_auc(tiny, x, maps, 1, kind="both")
