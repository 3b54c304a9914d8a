"""Where the head after the layer is not GAP + linear, the explanation and the report say so (#20 item 1)."""

from __future__ import annotations

import torch
from torch import nn

import conceptlens as cl
from helpers import TinyNet


class ReluHead(nn.Module):
    """fc(GAP(relu(conv(x)))): linear in the activations after the ReLU, not before it."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 3)
        self.preset = cl.data.Preset(size=8, mean=(0.5,) * 3, std=(0.25,) * 3, classes=["a", "b", "c"])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def test_explanations_say_whether_the_sum_is_an_identity(tmp_path) -> None:
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = cl.ConceptExplainer(cl.ModelSplit(ReluHead(), "conv"), method="pca", n_concepts=3).fit(x, 1)
    e = before.explain(x)
    assert e.exact is False and before.importance_result_.method == "gradient"  # no closed form
    torch.testing.assert_close(e.contributions.sum(1) + e.residual + e.bias, e.logits)  # by construction
    page = cl.report.write(before, x, tmp_path / "before", progress=False).read_text()
    assert "not an identity here" in page
    after = cl.ConceptExplainer(cl.ModelSplit(TinyNet(), "auto"), method="nmf", n_concepts=3)
    xt = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert after.fit(xt, 1).explain(xt).exact is True
    assert "not an identity here" not in cl.report.write(after, xt, tmp_path / "after",
                                                         progress=False).read_text()
