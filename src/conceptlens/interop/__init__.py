"""Interop with the ecosystem: Captum-style concept attributions and Quantus explain functions.

>>> cc = cl.interop.CaptumConcepts(ex)                      # Captum's LayerAttribution interface
>>> attr = cc.attribute(x, target=285)                     # [N, k, h, w] concept contribution maps
>>> f = cl.interop.quantus_explain_func(ex)                # for any Quantus metric's explain_func
>>> cl.interop.quantus_scores(quantus.FaithfulnessCorrelation(), model, x, y,
...                           {"concepts": f, "grad-cam": cl.interop.gradcam_explain_func()})

Neither Captum nor Quantus is imported here: the adapters follow their conventions (shapes, call
signatures), so conceptlens does not depend on them.
"""

from __future__ import annotations

from conceptlens.interop.captum_adapter import CaptumConcepts
from conceptlens.interop.quantus_adapter import gradcam_explain_func, quantus_explain_func, quantus_scores

__all__ = ["CaptumConcepts", "gradcam_explain_func", "quantus_explain_func", "quantus_scores"]
