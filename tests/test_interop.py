"""Interop: CaptumConcepts follows Captum's layer-attribution conventions (checked against Captum itself),
its maps add up to the explainer's contributions, and one Quantus faithfulness metric scores conceptlens's
concept maps and masks beside Grad-CAM (Captum's and conceptlens's) in one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import conceptlens as cl
from helpers import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread_unless_slow")


@pytest.fixture()
def setup(tiny_images: torch.Tensor) -> tuple[TinyNet, cl.ConceptExplainer]:
    model = TinyNet()
    ex = cl.ConceptExplainer(cl.ModelSplit(model, "auto"), method="nmf", n_concepts=3, seed=0)
    return model, ex.fit(tiny_images, target=1)


def test_concept_maps_add_up_to_the_explainers_contributions(setup, tiny_images):
    _, ex = setup
    cc = cl.interop.CaptumConcepts(ex)
    attr = cc.attribute(tiny_images)
    h, w, _ = ex.split.activation_shape
    assert attr.shape == (12, 3, h, w) and not attr.requires_grad
    e = ex.explain(tiny_images)
    torch.testing.assert_close(attr.mean((2, 3)), e.contributions, rtol=1e-5, atol=1e-6)
    # summed over concepts: the mean is Σ contributions = logit − bias − residual (exact head)
    total = cc.attribute(tiny_images, attr_dim_summation=True)
    assert total.shape == (12, 1, h, w)
    torch.testing.assert_close(total.mean((1, 2, 3)), e.logits - e.bias - e.residual, rtol=1e-4, atol=1e-5)
    raw = cc.attribute(tiny_images, weighted=False)
    torch.testing.assert_close(raw, ex.encode(ex.activations(tiny_images)).movedim(-1, 1))
    assert bool((cc.attribute(tiny_images, relu_attributions=True) >= 0).all())


def test_other_targets_use_the_heads_closed_form_per_image(setup, tiny_images):
    model, ex = setup
    cc = cl.interop.CaptumConcepts(ex)
    targets = [0, 1, 2, 3] * 3
    attr = cc.attribute(tiny_images, target=targets)
    # oracle: an explainer fitted for each class gives the same weights (same bank: same data and seed)
    for c in (0, 2):
        other = cl.ConceptExplainer(cl.ModelSplit(model, "auto"), method="nmf", n_concepts=3, seed=0,
                                    importance="linear").fit(tiny_images, target=c)
        idx = [i for i, t in enumerate(targets) if t == c]
        torch.testing.assert_close(attr[idx].mean((2, 3)), other.explain(tiny_images[idx]).contributions,
                                   rtol=1e-5, atol=1e-6)
    by_name = cc.attribute(tiny_images, target="class 2")
    torch.testing.assert_close(by_name, cc.attribute(tiny_images, target=torch.tensor(2)))
    with pytest.raises(cl.ConceptLensError, match="targets for 12 images"):
        cc.attribute(tiny_images, target=[1, 2])
    with pytest.raises(cl.ConceptLensError, match="additional_forward_args"):
        cc.attribute(tiny_images, additional_forward_args=(1,))


def test_shapes_and_interpolation_match_captums_layer_attributions(setup, tiny_images):
    captum_attr = pytest.importorskip("captum.attr")
    model, ex = setup
    cc = cl.interop.CaptumConcepts(ex)
    gc = captum_attr.LayerGradCam(model, model.features).attribute(tiny_images, target=1)
    ours = cc.attribute(tiny_images, target=1, attr_dim_summation=True)
    assert ours.shape == gc.shape  # [N, 1, h, w]
    act = captum_attr.LayerActivation(model, model.features).attribute(tiny_images)
    assert cc.attribute(tiny_images).shape[0::2] == act.shape[0::2]  # [N, k | C, h, w]
    up = cc.interpolate(ours, (16, 16), "bilinear")
    torch.testing.assert_close(up, captum_attr.LayerAttribution.interpolate(ours, (16, 16), "bilinear"))
    assert cc.interpolate(ours, 16).shape == (12, 1, 16, 16)


def test_refuses_what_it_cannot_explain(tiny):
    ex = cl.ConceptExplainer(cl.ModelSplit(tiny, "auto"), n_concepts=2)
    with pytest.raises(cl.NotFittedError):
        cl.interop.CaptumConcepts(ex)
    with pytest.raises(cl.ConceptLensError, match="ConceptExplainer or a MaskExplainer"):
        cl.interop.quantus_explain_func(object())


def test_explain_funcs_follow_quantus_calling_convention(setup, tiny_images):
    model, ex = setup
    x = tiny_images.numpy()
    y = np.full(12, 1)
    a = cl.interop.quantus_explain_func(ex)(model=model, inputs=x, targets=y)
    assert a.shape == (12, 1, 16, 16) and a.dtype == np.float32
    # the upsampled concept map keeps the layer map's mean up to interpolation at the borders
    total = cl.interop.CaptumConcepts(ex).attribute(tiny_images, attr_dim_summation=True)
    np.testing.assert_allclose(a.mean((1, 2, 3)), total.mean((1, 2, 3)).numpy(), rtol=0.05, atol=1e-3)
    g = cl.interop.gradcam_explain_func()(model=model, inputs=x, targets=y)
    assert g.shape == (12, 1, 16, 16) and g.min() >= 0 and g.max() <= 1
    with pytest.raises(cl.ConceptLensError, match="another model"):
        cl.interop.quantus_explain_func(ex)(model=TinyNet(seed=1), inputs=x, targets=y)


def test_one_quantus_metric_scores_concepts_masks_and_grad_cam_in_one_call(setup, tiny_images):
    quantus = pytest.importorskip("quantus")
    captum_attr = pytest.importorskip("captum.attr")
    from conceptlens.attribution.masks import MaskExplainer

    model, ex = setup
    y = model(tiny_images).argmax(1)

    def captum_gradcam(model, inputs, targets, **_):  # the peer as a Captum user writes it
        attr = captum_attr.LayerGradCam(model, model.features).attribute(
            torch.as_tensor(inputs), target=torch.as_tensor(targets), relu_attributions=True)
        return captum_attr.LayerAttribution.interpolate(attr, (16, 16), "bilinear").detach().numpy()

    funcs = {"concepts": cl.interop.quantus_explain_func(ex),
             # both area paths: in 10 steps the penalty path alone (the default) leaves some masks whole, a
             # constant map whose correlation is undefined
             "masks": cl.interop.quantus_explain_func(MaskExplainer(model, steps=10, size=4, seed=0,
                                                                    area_mode="both")),
             "grad-cam": cl.interop.gradcam_explain_func(),
             "captum grad-cam": captum_gradcam}

    def run() -> dict[str, np.ndarray]:
        metric = quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=32, return_aggregate=False,
                                                 disable_warnings=True)
        return cl.interop.quantus_scores(metric, model, tiny_images, y, funcs, device="cpu")

    state = np.random.get_state()  # noqa: NPY002 - checked to be left as it was
    res = run()
    assert set(res) == set(funcs) and all(v.shape == (12,) for v in res.values())
    assert all(np.isfinite(v).all() and (np.abs(v) <= 1).all() for v in res.values())  # correlations
    again = run()
    for k in funcs:
        np.testing.assert_array_equal(res[k], again[k])  # same seed → same perturbations → same scores
    # our Grad-CAM and Captum's agree up to Grad-CAM's per-image scaling, which a correlation ignores
    np.testing.assert_allclose(res["grad-cam"], res["captum grad-cam"], atol=1e-6)
    after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(after[1], state[1]) and after[2] == state[2]  # the global NumPy state is restored


def test_region_perturbation_keeps_its_per_image_curves(setup, tiny_images):
    quantus = pytest.importorskip("quantus")
    model, ex = setup
    y = model(tiny_images).argmax(1)
    metric = quantus.RegionPerturbation(patch_size=4, regions_evaluation=4, return_aggregate=False,
                                        disable_warnings=True)
    res = cl.interop.quantus_scores(metric, model, tiny_images, y,
                                    {"concepts": cl.interop.quantus_explain_func(ex),
                                     "grad-cam": cl.interop.gradcam_explain_func()}, device="cpu")
    assert all(v.shape == (12, 4) and np.isfinite(v).all() for v in res.values())
