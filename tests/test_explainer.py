"""ConceptExplainer end to end on the real EfficientNet-Lite0: ICE's exact decomposition of the logit,
autograd weights = closed form, save/load round trips, and every bad input a user can make."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.errors import (
    ActivationError,
    ImageError,
    NotFittedError,
    ParameterError,
    SavedFileError,
    TargetError,
)
from conceptlens.importance.gradient import gradient_weights

CAT = 285  # "Egyptian cat": EfficientNet-Lite0's top class for chelsea


@pytest.fixture(scope="module", params=["nmf", "pca", "kmeans"])
def fitted(request, lite0_split, photos, photo_acts) -> cl.ConceptExplainer:
    return cl.ConceptExplainer(lite0_split, method=request.param, n_concepts=5, seed=0).fit(
        photos, target=CAT, A=photo_acts
    )


def test_contributions_residual_bias_equal_logit(fitted, photos, photo_acts, lite0) -> None:
    e = fitted.explain(photos, A=photo_acts)
    with torch.no_grad():
        logits = lite0(photos)[:, CAT]
    total = e.contributions.sum(1) + e.residual + e.bias
    assert torch.allclose(total, logits, atol=1e-4)
    assert torch.allclose(e.logits, logits, atol=1e-5)
    # the residual is computed on its own (mean_hw(A − decode(U)) · w_c), so this identity is a real check
    assert torch.allclose(e.contributions, e.scores * e.weights)
    assert e.maps.shape == (photos.shape[0], 5, 224, 224)
    assert fitted.concepts_.shape == (5, 1280) and fitted.importance_.shape == (5,)


def test_gradient_weights_equal_closed_form(fitted, lite0_split, photo_acts) -> None:
    g = gradient_weights(fitted.decomposition_, lite0_split.h, photo_acts, CAT)
    assert torch.allclose(g, fitted.weights_, atol=1e-4)
    assert fitted.importance_result_.method == "linear"


def test_gradient_importance_on_the_same_explainer(lite0_split, photos, photo_acts) -> None:
    lin = cl.ConceptExplainer(lite0_split, "nmf", 4, importance="linear").fit(photos, CAT, A=photo_acts)
    grad = cl.ConceptExplainer(lite0_split, "nmf", 4, importance="gradient").fit(photos, CAT, A=photo_acts)
    assert torch.allclose(lin.weights_, grad.weights_, atol=1e-4)
    assert torch.allclose(lin.importance_, grad.importance_, atol=1e-4)


def test_central_differences_agree(lite0_split, photo_acts) -> None:
    """ICE's own code uses central differences with ε = 1e-4: autograd must agree to about that."""
    x = torch.zeros(photo_acts.shape[0], 3, 8, 8)  # not used when A is given, but one image per row of A
    ex = cl.ConceptExplainer(lite0_split, "nmf", 3).fit(x, CAT, A=photo_acts)
    # the weights are derivatives at the reconstructed fit activations: differentiate at the same point
    A = ex.decomposition_.decode(ex.encode(photo_acts)).double()
    W = ex.concepts_.double()
    h = lambda a: lite0_split.h(a.float()).double()  # noqa: E731
    eps = 1e-4
    fd = torch.stack([
        ((h(A + eps * W[j]) - h(A - eps * W[j]))[:, CAT] / (2 * eps)).mean() for j in range(3)
    ])
    assert torch.allclose(fd.float(), ex.weights_, rtol=1e-2, atol=1e-3)


def test_pca_with_all_components_reconstructs_and_has_zero_residual(lite0_split, photos) -> None:
    # with k = C, PCA is exact: the concepts explain the whole logit
    A = torch.rand(2, 3, 3, 12)
    head_split = _tiny_linear_split(12)
    ex = cl.ConceptExplainer(head_split, "pca", 12).fit(torch.zeros(2, 3, 4, 4), 0, A=A)
    e = ex.explain(torch.zeros(2, 3, 4, 4), A=A)
    assert e.residual.abs().max() < 1e-4


def _tiny_linear_split(C: int) -> cl.ModelSplit:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, C, 2)
            self.act = nn.ReLU()
            self.fc = nn.Linear(C, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    return cl.ModelSplit(M().eval(), "act", probe=torch.randn(1, 3, 4, 4))


def test_save_load_identical(fitted, photos, photo_acts, lite0, tmp_path) -> None:
    path = fitted.save(tmp_path / "cats.cl")
    ex2 = cl.ConceptExplainer.load(path, model=lite0)
    e1, e2 = fitted.explain(photos, A=photo_acts), ex2.explain(photos, A=photo_acts)
    for f in ("scores", "weights", "contributions", "residual", "logits", "maps"):
        assert torch.equal(getattr(e1, f), getattr(e2, f)), f
    assert e1.bias == e2.bias and ex2.target_ == CAT and ex2.split.layer == fitted.split.layer
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind


def test_corrupt_truncated_tampered_files(fitted, lite0, tmp_path) -> None:
    path = fitted.save(tmp_path / "x.cl")
    raw = path.read_bytes()
    (tmp_path / "trunc.cl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SavedFileError, match="truncated or corrupt"):
        cl.ConceptExplainer.load(tmp_path / "trunc.cl", model=lite0)
    (tmp_path / "junk.cl").write_bytes(b"\x00" * 64)
    with pytest.raises(SavedFileError):
        cl.ConceptExplainer.load(tmp_path / "junk.cl", model=lite0)
    # flip one byte of the tensor data: the checksum refuses it
    tampered = bytearray(raw)
    tampered[-5] ^= 0xFF
    (tmp_path / "tampered.cl").write_bytes(bytes(tampered))
    with pytest.raises(SavedFileError, match="modified"):
        cl.ConceptExplainer.load(tmp_path / "tampered.cl", model=lite0)
    # a manifest with an unknown schema
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["conceptlens"])
    manifest["schema"] = "other/9"
    header["__metadata__"]["conceptlens"] = json.dumps(manifest)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    (tmp_path / "schema.cl").write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])
    with pytest.raises(SavedFileError, match="schema"):
        cl.ConceptExplainer.load(tmp_path / "schema.cl", model=lite0)
    # a manifest edited by hand (another layer) is refused too: the checksum covers it
    manifest["schema"] = cl.explainer.SCHEMA
    manifest["layer"] = "_blocks.15"
    header["__metadata__"]["conceptlens"] = json.dumps(manifest)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    (tmp_path / "layer.cl").write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])
    with pytest.raises(SavedFileError, match="modified"):
        cl.ConceptExplainer.load(tmp_path / "layer.cl", model=lite0)
    with pytest.raises(SavedFileError, match="no saved explainer"):
        cl.ConceptExplainer.load(tmp_path / "missing.cl", model=lite0)


def test_target_by_name_and_bad_targets(lite0_split, photos, photo_acts) -> None:
    ex = cl.ConceptExplainer(lite0_split, "pca", 3).fit(photos, target="egyptian cat", A=photo_acts)
    assert ex.target_ == CAT and ex.target_name_ == "Egyptian cat"
    auto = cl.ConceptExplainer(lite0_split, "pca", 3).fit(photos, A=photo_acts)
    assert 0 <= auto.target_ < 1000
    with pytest.raises(TargetError, match="out of range"):
        cl.ConceptExplainer(lite0_split, "pca", 3).fit(photos, target=1000, A=photo_acts)
    with pytest.raises(TargetError, match="did you mean"):
        cl.ConceptExplainer(lite0_split, "pca", 3).fit(photos, target="egyptian kat", A=photo_acts)


def test_bad_parameters(lite0_split) -> None:
    for k in (0, -1, 1281):
        with pytest.raises(ParameterError, match="n_concepts"):
            cl.ConceptExplainer(lite0_split, "nmf", k)
    with pytest.raises(ParameterError, match="unknown concept method"):
        cl.ConceptExplainer(lite0_split, "nfm", 3)
    with pytest.raises(ParameterError, match="unknown importance"):
        cl.ConceptExplainer(lite0_split, "nmf", 3, importance="shap")


def test_negative_activations_under_nmf(lite0) -> None:
    split = cl.ModelSplit(lite0, "_bn1")  # before the head's ReLU6: signed
    x = cl.data.sample_images(lite0.preset)[:2]
    with pytest.raises(ActivationError, match=r"'_bn1'.*down to -[0-9.]+.*pca"):
        cl.ConceptExplainer(split, "nmf", 3).fit(x, CAT)


def test_nan_images_and_empty_input(lite0_split, photos) -> None:
    x = photos[:2].clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ActivationError, match="NaN"):
        cl.ConceptExplainer(lite0_split, "nmf", 3).fit(x, CAT)
    with pytest.raises(ImageError):
        cl.ConceptExplainer(lite0_split, "nmf", 3).fit(torch.zeros(0, 3, 224, 224), CAT)


def test_not_fitted(lite0_split, photos, tmp_path) -> None:
    ex = cl.ConceptExplainer(lite0_split, "nmf", 3)
    for call in (lambda: ex.explain(photos), lambda: ex.concepts_, lambda: ex.save(tmp_path / "a.cl")):
        with pytest.raises(NotFittedError, match="fit"):
            call()


def test_nonlinear_head_uses_gradient(tiny, tiny_images) -> None:
    split = cl.ModelSplit(tiny, "features.1", probe=tiny_images[:1])  # conv-ReLU-GAP-linear after: not linear
    assert split.linear_head() is None
    ex = cl.ConceptExplainer(split, "nmf", 3).fit(tiny_images, target=1)
    assert ex.importance_result_.method == "gradient"
    e = ex.explain(tiny_images)
    with torch.no_grad():
        total = e.contributions.sum(1) + e.residual + e.bias
        assert torch.allclose(total, tiny(tiny_images)[:, 1], atol=1e-5)
