"""Faithfulness numbers: pure functions on tensors (and on a fitted explainer, read duck-typed).

Modules are named after the paper that defined their numbers (each number applies to every method):

- :mod:`~conceptlens.metrics.ice`: ICE's Fid_c / Fid_r, reconstruction error, sparsity.
- :mod:`~conceptlens.metrics.craft`: the holistic C-Deletion / C-Insertion / C-μFidelity of CRAFT's
  authors (lower / higher / higher is better), prevalence and reliability.
- :mod:`~conceptlens.metrics.face`: FACE's accuracy after reconstruction, C-Del and C-Ins on accuracies
  (``accuracy_deletion``: AOPC style, *higher* is better, named apart from C-Deletion on purpose;
  ``accuracy_insertion``), C-Gini, stability.

Every metric is reachable as ``cl.metrics.<name>``.
"""

from conceptlens.metrics.craft import (
    c_deletion,
    c_insertion,
    c_mu_fidelity,
    holistic,
    prevalence_reliability,
)
from conceptlens.metrics.face import (
    accuracy_deletion,
    accuracy_insertion,
    c_del,
    c_gini,
    c_ins,
    reconstruction_accuracy,
    stability,
)
from conceptlens.metrics.ice import evaluate, fid_c, fid_r, fidelity, reconstruction_error, sparsity
from conceptlens.metrics.pixels import pixel_auc

__all__ = [
    "fidelity", "fid_r", "fid_c", "reconstruction_error", "sparsity", "evaluate",
    "c_deletion", "c_insertion", "c_mu_fidelity", "holistic", "pixel_auc", "prevalence_reliability",
    "accuracy_deletion", "accuracy_insertion", "c_gini", "reconstruction_accuracy", "stability",
    "c_del", "c_ins",  # deprecated aliases of accuracy_deletion / accuracy_insertion
]
