"""Minimal binary masks by activation matching (seed 004): ``MaskExplainer`` and its result.

The generator, the objective and the optimisation live in the submodules; the call sites in
:mod:`conceptlens.split.sites`, the pixel metrics in :mod:`conceptlens.metrics.pixels`, the comparison with
saliency baselines in :mod:`conceptlens.workflows.masks` and the benchmark in :mod:`conceptlens.bench.masks`.
"""

from conceptlens.attribution.masks.explainer import DEFAULT_WEIGHTS, MaskExplainer, MaskExplanation

__all__ = ["MaskExplainer", "MaskExplanation", "DEFAULT_WEIGHTS"]
