"""Concept extractors: each fits a bank ``W [k, C]`` on activations and encodes them as ``U [..., k]``.

Use a class directly (``NMF(n_concepts=10).fit(A)``) or by name through the registry
(``get("nmf")``); :func:`available` lists the names. See :mod:`conceptlens.decompose.base` for the
notation and the protocol every method follows.
"""

from .base import Decomposition, available, get, register
from .craft import CRAFT
from .eddp import EDDP
from .face import FACE
from .kmeans import KMeans
from .nmf import NMF
from .pca import PCA

__all__ = ["Decomposition", "register", "get", "available", "NMF", "PCA", "KMeans", "FACE", "CRAFT", "EDDP"]
