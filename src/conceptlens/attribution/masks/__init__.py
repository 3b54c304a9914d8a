"""Minimal binary masks by activation matching (seed 004): ``MaskExplainer`` and its result."""

from conceptlens.attribution.masks.explainer import *  # noqa: F403
from conceptlens.attribution.masks.explainer import MaskExplainer, MaskExplanation  # noqa: F401
