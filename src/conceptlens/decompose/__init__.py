"""Concept extractors: each fits a bank ``W [k, C]`` on activations and encodes them as ``U [..., k]``.

Use a class directly (``NMF(n_concepts=10).fit(A)``) or by name through the registry
(``get("nmf")``); :func:`available` lists the names. See :mod:`conceptlens.decompose.base` for the
notation and the protocol every method follows.

Adding a method = one new file here (a :class:`Decomposition` subclass decorated with
``@register("name")`` that declares what it needs) and its test: every public module of this package is
imported below, so the file registers itself; the explainer, compare, the report and the CLI read its
declarations.
"""

import importlib
import pkgutil

from conceptlens.decompose.base import Decomposition, available, get, register
from conceptlens.decompose.craft import CRAFT
from conceptlens.decompose.eddp import EDDP
from conceptlens.decompose.face import FACE
from conceptlens.decompose.kmeans import KMeans
from conceptlens.decompose.nmf import NMF
from conceptlens.decompose.pca import PCA

__all__ = ["Decomposition", "register", "get", "available", "NMF", "PCA", "KMeans", "FACE", "CRAFT", "EDDP"]

for _info in pkgutil.iter_modules(__path__):  # each method file registers itself when imported
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
