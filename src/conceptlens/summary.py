"""What a fitted explainer shows of itself in a notebook, and the little of its fit it keeps for that.

Notation: ``x [N,3,H,W]`` the fit images, ``A = g(x) [N,h,w,C]``, ``U = encode(A) [N,h,w,k]``, ``k``
concepts, ``s`` the side of a thumbnail (at most :data:`THUMBNAIL` pixels).

Why a hook: the explainer layer may not import the report layer (``pyproject.toml``'s import-linter
contract), yet ``ex._repr_html_()`` must render HTML and ``ex.plot_concepts()`` a matplotlib figure. The
classes here only *ask* for a rendering by name through :mod:`conceptlens._display` (a registry in the
bottom layer); :mod:`conceptlens.report.display` registers the renderers when it is imported, and the
registry imports it on first use. So the explainer never names a report module in an import, and all the
HTML and figures live in one place.

At the end of :meth:`~conceptlens.ConceptExplainer.fit` the explainer keeps (``keep_fit_summary``):

* ``fit_fidelity_``: ICE's ``fid_c`` / ``fid_r`` on the fit images (one extra head pass on ``decode(U)``, in
  chunks of 256 images);
* ``display_images_ [k,3,s,s]``: for each concept the fit image where it scores highest (normalised as the
  model sees it, downsized), and ``display_maps_ [k,s,s]`` the concept's map on it.

A loaded explainer has neither (they are not saved): its card says so, and ``ex.plot_concepts(x)`` draws
the prototypes of any images.
"""

from __future__ import annotations

from typing import Any

import torch

from conceptlens import _display
from conceptlens.attribution.maps import upsample_maps
from conceptlens.importance.linear import scores as spatial_scores
from conceptlens.metrics.ice import fid_c, fid_r

__all__ = ["THUMBNAIL", "ExplainerDisplay", "ExplanationDisplay", "keep_fit_summary"]

#: Largest side in pixels of the prototype thumbnails an explainer keeps from its fit.
THUMBNAIL = 96


def keep_fit_summary(ex: Any, x: Any, A: torch.Tensor, U: torch.Tensor, logits: torch.Tensor) -> None:
    """Set ``ex.fit_fidelity_``, ``ex.display_images_`` and ``ex.display_maps_`` (see the module docstring).

    Parameters
    ----------
    ex
        The explainer being fitted (``decomposition_`` and ``target_`` set).
    x
        ``[N,3,H,W]`` the fit images (anything else, e.g. a stream: no thumbnails are kept).
    A, U
        ``[N,h,w,C]`` activations and ``[N,h,w,k]`` their codes.
    logits
        ``[N,K]`` ``h(A)``.
    """
    d, h, b = ex.decomposition_, ex.split.h, 256  # chunks: Â of all images at once would double the memory
    with torch.no_grad():
        approx = torch.cat([h(d.decode(U[i: i + b])) for i in range(0, U.shape[0], b)])
    t = ex.target_
    ex.fit_fidelity_ = {"fid_c": fid_c(logits, approx), "fid_r": fid_r(logits[:, t], approx[:, t])}
    ex.display_images_ = ex.display_maps_ = None
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != U.shape[0]:
        return
    k = int(U.shape[-1])
    top = spatial_scores(U).argmax(0)  # [k] the image where each concept scores highest
    H, W = int(x.shape[-2]), int(x.shape[-1])
    f = min(1.0, THUMBNAIL / max(H, W))
    size = (max(1, round(H * f)), max(1, round(W * f)))
    imgs = x[top.to(x.device)].detach().float()
    if size != (H, W):
        imgs = torch.nn.functional.interpolate(imgs, size=size, mode="bilinear", align_corners=False,
                                               antialias=True)
    maps = upsample_maps(U[top.to(U.device)].detach(), size)  # [k (images), k (concepts), s, s]
    ex.display_images_ = imgs.cpu()
    ex.display_maps_ = maps[torch.arange(k), torch.arange(k)].float().cpu()


class ExplainerDisplay:
    """The notebook face of :class:`~conceptlens.ConceptExplainer` (a mixin: no state of its own)."""

    def _repr_html_(self) -> str:
        """A summary card: model, layer, method, ``k``, target, fidelity, the concepts by importance with
        each one's top prototype (rendered by :func:`conceptlens.report.display.explainer_html`)."""
        return str(_display.render("explainer_html", self))

    def plot_concepts(self, x: torch.Tensor | None = None, *, n_prototypes: int = 4,
                      n_concepts: int | None = None) -> Any:
        """The concepts as a matplotlib figure: one row per concept (most important first), its prototypes
        as ICE heatmaps (region bright, rest dimmed).

        Parameters
        ----------
        x
            ``[N,3,H,W]`` images to take the prototypes from (the ``n_prototypes`` top-scoring ones per
            concept); None: the one prototype per concept kept from the fit.
        n_prototypes
            Prototypes per concept when ``x`` is given (at most ``N``).
        n_concepts
            Show only the most important ones (default: all ``k``).

        Returns
        -------
        matplotlib.figure.Figure
            A bare Agg-renderable figure (not registered with pyplot; ``fig.savefig(...)`` works headless).
        """
        return _display.render("concepts_figure", self, x=x, n_prototypes=n_prototypes, n_concepts=n_concepts)


class ExplanationDisplay:
    """The notebook face of :class:`~conceptlens.LocalExplanation` (a mixin: no state of its own)."""

    def _repr_html_(self) -> str:
        """One contribution bar chart per image (HTML, no picture): logit = Σ contributions + residual +
        bias (rendered by :func:`conceptlens.report.display.explanation_html`)."""
        return str(_display.render("explanation_html", self))

    def plot(self, i: int = 0, *, n_concepts: int | None = None) -> Any:
        """How image ``i``'s target logit is made, as a matplotlib figure (bars: the concepts by
        ``|contribution|``, then the residual, the bias and the logit).

        Parameters
        ----------
        i
            The image (row of ``scores [n,k]``).
        n_concepts
            Show only the largest ``|contributions|`` (default: all ``k``).

        Returns
        -------
        matplotlib.figure.Figure
        """
        return _display.render("explanation_figure", self, i=i, n_concepts=n_concepts)
