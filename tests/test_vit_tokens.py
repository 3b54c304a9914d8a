"""Vision transformers end to end (#21 item 4): a token layer [N, E + h·w, C] is the grid of its patches, the
class tokens set aside and put back by h; layer='auto' for class-token and average-pooled heads; every concept
method, the maps and compare on a small ViT."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import conceptlens as cl
from conceptlens.errors import ActivationError
from conceptlens.workflows.compare import compare


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.mlp(self.norm2(x))


class ToyViT(nn.Module):
    """Patch embedding, ``n_prefix`` class tokens (a ``cls_token`` parameter), 3 blocks, a class-token or an
    average-pooled head."""

    def __init__(self, pool: str = "token", n_prefix: int = 1, size: int = 32, patch: int = 8, c: int = 16,
                 n_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool, self.n_prefix = pool, n_prefix
        self.patch_embed = nn.Conv2d(3, c, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, n_prefix, c))
        self.pos_embed = nn.Parameter(torch.randn(1, n_prefix + (size // patch) ** 2, c) * 0.5)
        self.blocks = nn.Sequential(*[_Block(c) for _ in range(3)])
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, n_classes)
        self.preset = cl.data.Preset(size=size, mean=(0.5,) * 3, std=(0.25,) * 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0] if self.pool == "token" else t[:, self.n_prefix:].mean(1))


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("mode", ["fx", "hooks"])
@pytest.mark.parametrize("n_prefix", [1, 2])
def test_token_layer_is_a_patch_grid_and_h_puts_the_class_tokens_back(mode: str, n_prefix: int) -> None:
    m = ToyViT(n_prefix=n_prefix)
    s = cl.ModelSplit(m, "blocks.1", mode=mode)
    assert s.mode == mode and s.layout.kind == "tokens" and s.layout.n_extra == n_prefix
    assert s.activation_shape == (4, 4, 16)
    x = _x()
    A, extra = s.g(x, return_extra=True)
    raw = m.blocks[:2](torch.cat([m.cls_token.expand(6, -1, -1), m.patch_embed(x).flatten(2).transpose(1, 2)],
                                 1) + m.pos_embed)
    assert A.shape == (6, 4, 4, 16) and extra.shape == (6, n_prefix, 16)
    assert torch.allclose(A.reshape(6, 16, 16), raw[:, n_prefix:], atol=1e-5)  # row-major patches
    assert torch.allclose(extra, raw[:, :n_prefix], atol=1e-5)
    with torch.no_grad():
        ref = m(x)
        assert (s.h(A, extra) - ref).abs().max() < 1e-5  # each image's own class tokens: exact
        # default: the probe's mean class tokens, so h depends on the patches alone (not exact here) …
        assert torch.allclose(s.extra_tokens_, s.g(s._probe, return_extra=True)[1].mean(0))
        assert (s.h(A) - ref).abs().max() > 1e-4
        # … and a reference from one image makes h exact on that image
        s.set_reference(x[2:3])
        assert (s.h(A[2:3]) - ref[2:3]).abs().max() < 1e-5


def test_auto_cuts_where_the_patches_reach_the_logits() -> None:
    token = cl.ModelSplit(ToyViT(pool="token"), "auto")
    # the class-token head reads no patch after the last block: the cut is the last block's input
    assert token.layer == "blocks.1" and "class token" in (token.auto_note or "")
    assert "pca" in (token.auto_note or "")
    avg = cl.ModelSplit(ToyViT(pool="avg"), "auto")
    assert avg.layer == cl.ModelSplit(ToyViT(pool="avg"), "blocks.2").layer  # the last block's output
    assert "class token" not in (avg.auto_note or "")
    x = _x()
    with torch.no_grad():  # an average-pooled head reads the class token only through the patches: exact
        assert (avg.h(avg.g(x)) - avg.model(x)).abs().max() < 1e-5


def test_every_concept_method_and_the_maps_on_a_vit() -> None:
    m = ToyViT(pool="avg")
    s = cl.ModelSplit(m, "auto")
    x = _x(8)
    quick = {"eddp": {"max_iter": 40}, "face": {"max_iter": 40}, "craft": {"patch_size": 16, "stride": 16}}
    res = compare(s, x, target=0, methods=cl.decompose.available(), n_concepts=3, seed=0, progress=False,
                  method_params={k: v for k, v in quick.items() if k in cl.decompose.available()})
    rows = {r["method"]: r for r in res.rows}
    for name, cls in ((n, cl.decompose.get(n)) for n in cl.decompose.available()):
        if cls.nonnegative:  # token activations are signed: the clear error, naming what to use instead
            assert rows[name]["error"].startswith("ActivationError") and "pca" in rows[name]["error"]
        else:
            assert rows[name]["error"] == "", (name, rows[name]["error"])
            assert 0.0 <= rows[name]["fid_c"] <= 1.0
    ex = res.explainers["pca"]
    e = ex.explain(x[:2])
    assert e.maps.shape == (2, 3, 32, 32) and torch.isfinite(e.maps).all()
    with pytest.raises(ActivationError, match="non-negative"):
        cl.ConceptExplainer(s, method="nmf", n_concepts=3, progress=False).fit(x, target=0)


def test_masks_match_a_vits_token_blocks() -> None:
    from conceptlens.attribution.masks.explainer import MaskExplainer
    from conceptlens.split.sites import activation_sites, default_layers

    m = ToyViT(pool="avg")
    x = _x(2)
    sites = activation_sites(m, x[:1])
    assert [s.name for s in sites if s.tokens and s.block] == ["blocks.0", "blocks.1", "blocks.2"]
    layers = default_layers(sites)  # no spatial activation: the token blocks, deepest weighted most
    assert list(layers) == ["blocks.0", "blocks.1", "blocks.2"] and layers["blocks.2"] == max(layers.values())
    masks = MaskExplainer(m, steps=3, seed=0, progress=False).explain(x, target=0)
    assert masks.masks.shape[0] == 2 and torch.isfinite(masks.masks).all()


def test_report_on_a_vit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = cl.ModelSplit(ToyViT(pool="avg"), "auto")
    x = _x(8)
    ex = cl.ConceptExplainer(s, method="pca", n_concepts=3, seed=0, progress=False).fit(x, target=0)
    page = cl.report.write(ex, x, tmp_path / "r")
    html = page.read_text()
    assert page.name == "index.html" and s.layer in html
    assert any((tmp_path / "r" / "img").iterdir())


@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_signed_split_gives_nmf_like_methods_an_exact_non_negative_view(mode: str) -> None:
    m = ToyViT(pool="token")
    s = cl.ModelSplit(m, "auto", signed="split", mode=mode)
    assert s.layer == "blocks.1" and s.activation_shape == (4, 4, 32)  # [max(A, 0), max(−A, 0)]: 2C
    x = _x(8)
    A, extra = s.g(x, return_extra=True)
    plain = cl.ModelSplit(m, "blocks.1", mode=mode).g(x)
    assert A.min() >= 0 and torch.equal(A[..., :16] - A[..., 16:], plain)
    with torch.no_grad():
        assert (s.h(A, extra) - m(x)).abs().max() < 1e-5
    ex = cl.ConceptExplainer(s, method="nmf", n_concepts=3, seed=0, progress=False).fit(x, target=1)
    assert ex.concepts_.shape == (3, 32) and ex.concepts_.min() >= 0
    with pytest.raises(cl.ConceptLensError, match="signed must be 'keep' or 'split'"):
        cl.ModelSplit(m, "auto", signed="abs")


def test_cli_signed_split_and_device(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image
    from typer.testing import CliRunner

    from conceptlens.cli import app

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(torch.rand(6, 32, 32, 3, generator=torch.Generator().manual_seed(0))):
        Image.fromarray((img.numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
    model = ["--model", "test_vit_tokens:ToyViT"]
    fit = ["fit", "--images", str(folder), *model, "--method", "nmf", "-k", "2", "--target", "0"]
    run = CliRunner().invoke
    res = run(app, [*fit, "-o", str(tmp_path / "a.cl")])
    assert res.exit_code == 2 and "non-negative" in res.output  # signed tokens
    res = run(app, [*fit, "--signed", "split", "-o", str(tmp_path / "b.cl")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.cl").exists()
    res = run(app, ["layers", *model])
    assert res.exit_code == 0 and "* blocks.1" in res.output and "signed='split'" in res.output
    if not torch.cuda.is_available():
        res = run(app, ["layers", *model, "--device", "cuda"])
        assert res.exit_code == 2 and "no CUDA GPU" in res.output


class _OddTokens(ToyViT):
    """A ViT whose blocks also carry 3 pooled tokens at the end: 1 + 16 + 3 tokens, no patch grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = torch.cat([t, t[:, 1:].reshape(x.shape[0], 4, 4, -1).mean(2)[:, :3]], dim=1)
        return self.head(self.norm(self.blocks(t))[:, 0])


def test_a_token_layer_with_an_unexpected_token_count_is_refused() -> None:
    with pytest.raises(cl.ConceptLensError, match=r"'blocks\.1' gave 20 tokens for a 32×32 input.*1 class"):
        cl.ModelSplit(_OddTokens(), "blocks.1")


@pytest.mark.parametrize("signed", ["keep", "split"])
def test_saved_vit_explainer_reloads_its_split_exactly(tmp_path, signed: str) -> None:  # type: ignore[no-untyped-def]
    """The file keeps ``signed`` and the reference class tokens h puts back, so the reloaded explainer's
    numbers are the fitted one's, bit for bit (before: the probe's noise tokens, and no signed view)."""
    model = ToyViT(n_prefix=2)
    x = _x(8)
    split = cl.ModelSplit(model, "blocks.1", signed=signed).set_reference(x)
    method = "nmf" if signed == "split" else "pca"
    ex = cl.ConceptExplainer(split, method=method, n_concepts=3, seed=0).fit(x, target=0)
    ex.save(tmp_path / "vit.cl")
    back = cl.ConceptExplainer.load(tmp_path / "vit.cl", model=ToyViT(n_prefix=2))
    assert back.split.signed == signed
    assert torch.equal(back.split.extra_tokens_, split.extra_tokens_)
    a, b = ex.explain(x), back.explain(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.contributions, b.contributions)
    with pytest.raises(cl.ConceptLensError, match="signed"):
        cl.ConceptExplainer.load(tmp_path / "vit.cl", split=cl.ModelSplit(
            ToyViT(n_prefix=2), "blocks.1", signed="split" if signed == "keep" else "keep"))


def test_fit_takes_the_reference_class_tokens_from_its_images() -> None:
    split = cl.ModelSplit(ToyViT(n_prefix=2), "blocks.1")
    x = _x(8)
    probe_tokens = split.extra_tokens_.clone()
    cl.ConceptExplainer(split, method="pca", n_concepts=3, seed=0).fit(x, target=0)
    _, extra = split.g(x, return_extra=True)
    assert torch.equal(split.extra_tokens_, extra.mean(0))
    assert not torch.equal(split.extra_tokens_, probe_tokens)
