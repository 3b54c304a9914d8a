"""Model sources (#21 item 3): timm:<arch> and hf:<folder> with their presets, weights that do not fit,
devices."""

from __future__ import annotations

import pickle

import pytest
import torch

import conceptlens as cl
from conceptlens.errors import ModelError

timm = pytest.importorskip("timm")


def test_timm_with_local_weights_and_its_own_preset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ref = timm.create_model("resnet18", pretrained=False, num_classes=5)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    m = cl.models.load("timm:resnet18", weights=path, num_classes=5)
    assert m.cl_name == "timm:resnet18" and not m.training
    for (k, a), b in zip(ref.state_dict().items(), m.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    cfg = ref.pretrained_cfg
    assert m.preset.size == cfg["input_size"][-1]
    assert m.preset.mean == pytest.approx(cfg["mean"]) and m.preset.std == pytest.approx(cfg["std"])
    assert m.preset.classes == ["0", "1", "2", "3", "4"]
    vit = cl.models.load("timm:vit_tiny_patch16_224")
    # ViT's own statistics (0.5, 0.5, 0.5), not ImageNet's; 1,000 ImageNet names
    assert vit.preset.mean == pytest.approx(vit.pretrained_cfg["mean"]) and vit.preset.mean != cfg["mean"]
    assert len(vit.preset.classes) == 1000 and vit.preset.classes[0] == "tench"
    assert cl.models.is_zoo_name("timm:resnet18") and not cl.models.is_zoo_name("timm:no_such_net")
    # a pretrained tag picks its pretrained_cfg (still no download): 21k classes named from timm's label info
    tagged = cl.models.load("timm:vit_tiny_patch16_224.augreg_in21k")
    assert cl.models.is_zoo_name("timm:vit_tiny_patch16_224.augreg_in21k")
    assert len(tagged.preset.classes) == tagged.num_classes == 21843 and tagged.preset.classes[0] != "0"


def test_weights_that_do_not_fit_name_the_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(path))
    with pytest.raises(ModelError, match=r"missing keys: 'layer1\.2\.conv1\.weight'"):
        cl.models.load("timm:resnet34", weights=path)
    with pytest.raises(ModelError, match=r"mis-shaped keys: 'fc\.weight \[1000, 512\] \(model: \[10, 512\]"):
        cl.models.load("timm:resnet18", weights=path, num_classes=10)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ModelError, match=r"unexpected keys: 'extra\.weight'"):
        cl.models.load("timm:resnet18", weights=tmp_path / "extra.pth")
    with pytest.raises(ModelError, match="did you mean resnet18"):
        cl.models.load("timm:resnt18")


class _Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("echo executed > marker",))


def test_timm_weights_with_code_are_never_executed(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"fc.weight": _Boom()}))
    with pytest.raises(ModelError, match="safely"):
        cl.models.load("timm:resnet18", weights=path)
    assert not (tmp_path / "marker").exists()


def _tiny_vit(folder, labels=("cat", "dog", "fox")):  # type: ignore[no-untyped-def]
    tf = pytest.importorskip("transformers")
    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(cfg).eval()
    model.save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                         image_std=[0.2, 0.3, 0.4]).save_pretrained(folder)
    return model


def test_hf_folder_loads_with_its_preset_and_explains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ref = _tiny_vit(tmp_path / "vit")
    m = cl.models.load(f"hf:{tmp_path / 'vit'}")
    assert m.preset == cl.data.Preset(size=32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4),
                                      classes=["cat", "dog", "fox"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(m(x).logits, ref(x).logits, atol=1e-6)
    split = cl.ModelSplit(m, "auto")  # transformers does not fx-trace: hooks; a token grid of 4 × 4 patches
    assert split.layout.kind == "tokens" and split.layout.n_extra == 1
    assert split.activation_shape == (4, 4, 32)
    A, extra = split.g(x, return_extra=True)
    with torch.no_grad():
        assert (split.h(A, extra) - ref(x).logits).abs().max() < 1e-5
    ex = cl.ConceptExplainer(split, method="pca", n_concepts=3, seed=0, progress=False).fit(x, target="dog")
    assert ex.target_ == 1 and ex.concepts_.shape == (3, 32)


def test_hf_folder_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="no config.json"):
        cl.models.load(f"hf:{tmp_path}")
    _tiny_vit(tmp_path / "a")
    _tiny_vit(tmp_path / "b", labels=("x", "y"))
    # a classifier head for 2 classes in a folder whose config says 3
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(ModelError, match=r"mismatched keys: .*classifier"):
        cl.models.load(f"hf:{tmp_path / 'a'}")
    torch.save({"nope": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(ModelError, match=r"unexpected keys: 'nope'"):
        cl.models.load(f"hf:{tmp_path / 'b'}", weights=tmp_path / "w.pth")
    with pytest.raises(ModelError, match="num_classes does not apply"):
        cl.models.load(f"hf:{tmp_path / 'b'}", num_classes=4)


def test_devices() -> None:
    assert cl.models.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cl.models.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelError, match="unknown device 'tpu9'"):
        cl.models.resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU.*--device cpu"):
            cl.models.load("timm:resnet18", device="cuda")
    m = cl.models.load("timm:resnet18", device="cpu")
    assert cl.ModelSplit(m, "layer3", check=False).device == torch.device("cpu")


def test_any_accelerator_is_checked_by_its_own_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # not only CUDA: a device type is asked of its torch backend (torch.<type>.is_available / device_count)
    import types

    from conceptlens.io.models import resolve_device

    fake = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
    monkeypatch.setattr(torch, "xpu", fake, raising=False)
    assert resolve_device("xpu:1") == torch.device("xpu:1")
    with pytest.raises(ModelError, match=r"only 2 GPU\(s\) \(xpu:0…xpu:1\)"):
        resolve_device("xpu:2")
    monkeypatch.setattr(fake, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no XPU GPU here; use --device cpu"):
        resolve_device("xpu")
    assert resolve_device("cpu") == torch.device("cpu")
