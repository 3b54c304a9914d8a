"""The masks' passes split over worker threads of one intra-op thread each (attribution/masks/parallel.py)."""

from __future__ import annotations

import pytest
import torch

from conceptlens.attribution.masks import MaskExplainer
from conceptlens.attribution.masks.generator import GroupedUNet
from conceptlens.attribution.masks.losses import DEFAULT_WEIGHTS, mask_loss, reference
from conceptlens.attribution.masks.parallel import SplitForward
from conceptlens.split.sites import activation_sites, resolve_layers
from helpers import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


def _setup(n: int = 5) -> tuple[TinyNet, torch.Tensor, list]:
    model = TinyNet()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x, activation_sites(model, x[:1])


def test_chunks_are_contiguous_and_balanced() -> None:
    model, _, sites = _setup()
    with SplitForward(model, sites, workers=2) as fw:
        assert fw.chunks(3) == [2, 1] and fw.chunks(6) == [3, 3] and fw.chunks(1) == [1]
        assert len(fw.models) == 2 and fw.models[0] is model and fw.models[1] is not model
    with SplitForward(model, sites, workers=1) as fw:
        assert fw.chunks(7) == [7] and fw._pool is None


def test_values_and_input_gradients_equal_the_plain_call() -> None:
    model, x, sites = _setup()
    names = [s.name for s in sites]
    g = torch.Generator().manual_seed(2)
    w_out = torch.randn(5, 4, generator=g)
    with SplitForward(model, sites, workers=1) as plain, SplitForward(model, sites, workers=2) as split:
        res = []
        for fw in (plain, split):
            xi = x.clone().requires_grad_(True)
            out, acts = fw(xi, rows=2)
            assert out.shape == (5, 4) and set(acts) == set(names)
            assert all(a.shape[0] == 2 for a in acts.values())  # the layers' outputs of the first 2 images
            # a loss on the logits and on the kept layer outputs reaches every image's input
            loss = (out * w_out).sum() + sum(a.pow(2).sum() for a in acts.values())
            loss.backward()
            res.append((out.detach(), {k: v.detach() for k, v in acts.items()}, xi.grad))
        (o1, a1, g1), (o2, a2, g2) = res
        torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
        for k in names:
            torch.testing.assert_close(a2[k], a1[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-6)
        assert g2.abs().sum((1, 2, 3)).min() > 0  # images 3-5 get their gradient through the logits alone
        with torch.no_grad():  # without gradient: the same logits, no layer outputs asked for
            out, acts = split(x, rows=0)
        torch.testing.assert_close(out, o1, rtol=1e-5, atol=1e-6)
        assert acts == {}
        torch.testing.assert_close(split.logits(x, 2), o1, rtol=1e-5, atol=1e-6)


def test_mask_loss_through_the_split_gives_the_generator_the_same_gradient() -> None:
    model, x, sites = _setup(3)
    layers = resolve_layers(None, sites)
    ref, logits0 = reference(model, x, sites)
    y = logits0.argmax(1)
    p_ref = torch.softmax(logits0 / DEFAULT_WEIGHTS["T"], 1)
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    grads, losses = [], []
    for workers in (1, 2):
        net = GroupedUNet(8, 4, 3, 1.0, [0, 1, 2])
        with SplitForward(model, sites, workers=workers) as fw:
            loss, *_ = mask_loss(model, net, x, y, ref, p_ref, sites, layers, DEFAULT_WEIGHTS, 1.0, noise,
                                 forward=fw if workers > 1 else None)
            loss.sum().backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_the_thread_count_is_restored_also_after_an_error() -> None:
    model, x, sites = _setup()
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with SplitForward(model, sites, workers=2):
            assert torch.get_num_threads() == 1  # the calling thread's small ops run in one thread too
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_two_threads_search_is_deterministic_and_keeps_the_class() -> None:
    torch.set_num_threads(2)
    model, x, _ = _setup(3)
    a = MaskExplainer(model, steps=20, size=8, progress=False).explain(x)
    b = MaskExplainer(model, steps=20, size=8, progress=False).explain(x)
    assert torch.equal(a.masks, b.masks) and a.history == b.history
    assert torch.get_num_threads() == 2


def test_a_model_that_cannot_be_copied_runs_the_plain_call() -> None:
    model, x, sites = _setup(4)

    class NoCopy(TinyNet):
        def __deepcopy__(self, memo: dict) -> NoCopy:
            raise TypeError("cannot copy")

    nc = NoCopy()
    nc.load_state_dict(model.state_dict())
    with SplitForward(nc, sites, workers=2) as fw:
        assert fw.workers == 1 and fw._pool is None
        out, _ = fw(x)
    torch.testing.assert_close(out, model(x))
