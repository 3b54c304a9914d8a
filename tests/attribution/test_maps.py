"""conceptlens.attribution.maps: upsampled code maps and spatial scores."""

from __future__ import annotations

import torch

from conceptlens.attribution.maps import spatial_mean, upsample_maps


def test_upsample_maps_of_a_constant_code_is_constant_and_scores_are_means() -> None:
    U = torch.rand(2, 3, 4, 5)
    U[0, :, :, 1] = 2.0
    m = upsample_maps(U, (9, 7))
    assert m.shape == (2, 5, 9, 7)
    torch.testing.assert_close(m[0, 1], torch.full((9, 7), 2.0))
    torch.testing.assert_close(spatial_mean(U), U.mean((1, 2)))
    flat = torch.rand(2, 5)
    assert spatial_mean(flat) is flat
