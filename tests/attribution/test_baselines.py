"""The saliency baselines the masks are compared with: occlusion and Grad-CAM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conceptlens.attribution.baselines import grad_cam, occlusion
from helpers import TinyNet


class QuadrantNet(nn.Module):
    """Looks only at the top-left quadrant: logit 0 = mean of that quadrant, logit 1 = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        q = x[:, :, :h, :w].mean((1, 2, 3)) * 4
        return torch.stack([q, torch.zeros_like(q)], 1) + 0 * self.dummy


pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


# ----------------------------------------------------------------------------------------- baselines
def test_occlusion_highlights_the_only_quadrant_the_model_sees(positive_images: torch.Tensor) -> None:
    sal = occlusion(QuadrantNet(), positive_images, target=0, patch=4, stride=4)
    assert sal.shape == (3, 1, 16, 16)
    assert bool((sal[:, :, :8, :8] > 0).all())
    assert bool((sal[:, :, 8:, :] == 0).all()) and bool((sal[:, :, :, 8:] == 0).all())
    # overlapping squares: outside pixels covered only by squares that miss the quadrant stay exactly 0
    sal2 = occlusion(QuadrantNet(), positive_images, target=0, patch=4, stride=2, batch_size=7)
    assert bool((sal2[:, :, 10:, :] == 0).all()) and bool((sal2[:, :, :6, :6] > 0).all())


def test_grad_cam_of_a_gap_linear_model_is_the_cam(tiny: TinyNet, tiny_images: torch.Tensor) -> None:
    x = tiny_images[:5]
    target = torch.tensor([0, 1, 2, 3, 1])
    got = grad_cam(tiny, x, target, layer="features", batch_size=2)
    with torch.no_grad():
        A = tiny.features(x)  # [N,C,h,w]
        w = tiny.fc.weight[target]  # [N,C]
        cam = F.relu(torch.einsum("nchw,nc->nhw", A, w))[:, None]
        cam = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)
        peak = cam.amax((1, 2, 3), keepdim=True)
        cam = torch.where(peak > 0, cam / peak, cam)
    torch.testing.assert_close(got, cam, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in tiny.parameters())
