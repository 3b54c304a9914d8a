"""The batch norms folded into their convolutions for the mask search (attribution/masks/fold.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conceptlens.attribution.masks.fold import conv_bn_pairs, fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


def _stats(bn: nn.BatchNorm2d, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen))  # type: ignore[union-attr]
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)  # type: ignore[union-attr]
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen))


class ConvBN(nn.Module):
    """conv → bn → relu6 → depthwise conv (with bias) → bn (no affine) → pool → linear."""

    def __init__(self, skip: bool = False) -> None:
        super().__init__()
        self.skip = skip
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.act = nn.ReLU6()
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, stride=2, groups=6), nn.BatchNorm2d(6, affine=False)
        self.fc = nn.Linear(6, 4)
        _stats(self.b1, 1)
        _stats(self.b2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        a = self.act(self.b1(h))
        if self.skip:  # the conv's output is used twice: folding it would change the sum
            a = a + h
        return self.fc(self.b2(self.c2(a)).mean((2, 3)))


def test_folded_copy_computes_the_same_function_without_batch_norms() -> None:
    torch.manual_seed(0)
    model = ConvBN().eval()
    x = torch.randn(5, 3, 12, 12)
    assert conv_bn_pairs(model, x[:1]) == [("c1", "b1"), ("c2", "b2")]
    folded = fold_batchnorm(model, x)
    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model itself is untouched
    assert all(not p.requires_grad for p in folded.parameters())
    with torch.no_grad():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the gradient with respect to the input (what the search uses) agrees too
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    model(xa).square().sum().backward()
    folded(xb).square().sum().backward()
    assert xa.grad is not None and xb.grad is not None
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)


def test_a_conv_output_used_elsewhere_leaves_the_model_unfolded() -> None:
    model = ConvBN(skip=True).eval()
    x = torch.randn(3, 3, 12, 12)
    assert ("c1", "b1") in conv_bn_pairs(model, x[:1])  # seen as a pair, but the check catches the skip
    assert fold_batchnorm(model, x) is model


def test_training_mode_and_models_without_pairs_are_returned_as_is() -> None:
    x = torch.randn(2, 3, 12, 12)
    assert fold_batchnorm(ConvBN().train(), x).training
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    plain(x)
    assert fold_batchnorm(plain, x) is plain


def test_a_conv_called_twice_is_not_folded() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
            _stats(self.b, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.c(x)) + self.c(x)

    model = Twice().eval()
    x = torch.randn(2, 3, 6, 6)
    assert conv_bn_pairs(model, x) == []
    assert fold_batchnorm(model, x) is model


class SamePad(nn.Conv2d):
    """A TensorFlow-style "same" convolution: a padding module of its own, then a convolution without."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: tuple[int, int, int, int]) -> None:
        super().__init__(cin, cout, k, stride, bias=False)
        self.static_padding = nn.ZeroPad2d(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


def test_a_symmetric_padding_module_moves_into_the_convolution() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(SamePad(3, 4, 3, 1, (1, 1, 1, 1)), nn.BatchNorm2d(4), nn.ReLU6(),
                          SamePad(4, 4, 3, 2, (0, 1, 0, 1)), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(64, 3))
    _stats(model[1], 4)
    _stats(model[4], 5)
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    folded = fold_batchnorm(model, x)
    assert folded is not model
    assert isinstance(folded[0].static_padding, nn.Identity) and folded[0].padding == (1, 1)
    # an asymmetric padding (stride 2, "same") cannot be a convolution's own: it stays a module
    assert isinstance(folded[3].static_padding, nn.ZeroPad2d) and folded[3].padding == (0, 0)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
