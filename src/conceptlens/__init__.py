"""conceptlens: explain what a PyTorch image classifier has learned in terms of concepts.

>>> import conceptlens as cl
>>> model = cl.models.load("efficientnet_lite0")
>>> split = cl.ModelSplit(model, layer="auto")
>>> x = cl.data.sample_images(model.preset)
>>> ex = cl.ConceptExplainer(split, method="nmf", n_concepts=10).fit(x, target="Egyptian cat")
>>> cl.metrics.fidelity(ex, x)
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import data, decompose, importance, metrics, models
from .compare import compare  # the function (the module stays reachable as conceptlens.compare's globals)
from .errors import ConceptLensError, NotFittedError
from .explainer import ConceptExplainer, LocalExplanation
from .split import ModelSplit


def __getattr__(name: str):  # lazy: matplotlib / jinja2 / the synthetic world load only when used
    import importlib

    if name in ("report", "synthetic", "cli", "bench", "store", "masks", "baselines", "groundtruth",
                "attribution", "recursive"):
        return importlib.import_module(f".{name}", __name__)
    if name == "MaskExplainer":
        return importlib.import_module(".masks", __name__).MaskExplainer
    raise AttributeError(f"module 'conceptlens' has no attribute {name!r}")


__all__ = [
    "__version__",
    "compare",
    "ConceptExplainer",
    "ConceptLensError",
    "LocalExplanation",
    "ModelSplit",
    "NotFittedError",
    "data",
    "decompose",
    "importance",
    "metrics",
    "models",
]
