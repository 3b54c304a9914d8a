"""Concept extractors: each fits a bank ``W [k, C]`` on activations and encodes them as ``U [..., k]``.

Use a class directly (``NMF(n_concepts=10).fit(A)``) or by name through the registry
(``get("nmf")``); :func:`available` lists the names. See :mod:`conceptlens.decompose.base` for the
notation and the protocol every method follows.
"""

from conceptlens.decompose.base import Decomposition, available, get, register
from conceptlens.decompose.craft import CRAFT
from conceptlens.decompose.eddp import EDDP
from conceptlens.decompose.face import FACE
from conceptlens.decompose.kmeans import KMeans
from conceptlens.decompose.nmf import NMF
from conceptlens.decompose.pca import PCA

__all__ = ["Decomposition", "register", "get", "available", "NMF", "PCA", "KMeans", "FACE", "CRAFT", "EDDP"]
