"""conceptlens: explain what a PyTorch image classifier has learned in terms of concepts.

>>> import conceptlens as cl
>>> model = cl.models.load("efficientnet_lite0")
>>> split = cl.ModelSplit(model, layer="auto")
>>> x = cl.data.sample_images(model.preset)
>>> ex = cl.ConceptExplainer(split, method="nmf", n_concepts=10).fit(x, target="Egyptian cat")
>>> cl.metrics.fidelity(ex, x)
"""

from __future__ import annotations

import conceptlens.io as data
from conceptlens import decompose, importance, metrics
from conceptlens._version import __version__
from conceptlens.errors import ConceptLensError, NotFittedError
from conceptlens.explainer import ConceptExplainer, LocalExplanation
from conceptlens.io import models
from conceptlens.split.model_split import ModelSplit
from conceptlens.workflows.compare import compare  # the function; the module is conceptlens.workflows.compare

#: Lazily imported modules (matplotlib / jinja2 / the synthetic world load only when used). The short
#: names are the pre-0.2 module names, kept as aliases of their new homes.
_LAZY = {
    "report": "conceptlens.report",
    "cli": "conceptlens.cli",
    "bench": "conceptlens.bench",
    "recursive": "conceptlens.recursive",
    "attribution": "conceptlens.attribution",
    "world": "conceptlens.world",
    "workflows": "conceptlens.workflows",
    "interop": "conceptlens.interop",
    "io": "conceptlens.io",
    "split": "conceptlens.split",
    "store": "conceptlens.io.store",
    "masks": "conceptlens.attribution.masks",
    "baselines": "conceptlens.attribution.baselines",
    "synthetic": "conceptlens.world",
    "groundtruth": "conceptlens.world.leaderboard",
}


def __getattr__(name: str):  # noqa: ANN202 - module attribute hook
    import importlib

    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name == "MaskExplainer":
        return importlib.import_module("conceptlens.attribution.masks").MaskExplainer
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
