"""A synthetic concept world with ground truth: images made of known concepts, their masks, their classes.

Real models have no ground truth for concepts. Here every concept is drawn by us, so we know, for
each image, which concepts it contains, exactly which pixels each one covers, and which concepts
matter for each class.

Notation
--------
=============  ==================  =================================================================
``S``          int                 image side in pixels (``size``)
``K``          int                 number of concepts (``len(concept_names)``)
``n_classes``  int                 number of classes; class ``c`` is the pair ``key_concepts[c]``
``x``          ``[n, 3, S, S]``    images normalised for the model: ``x = (raw - MEAN) / STD`` with
                                   ``raw`` in ``[0, 1]``, ``MEAN = 0.5`` and ``STD = 0.25`` per channel
``y``          ``[n]``             class labels (int64)
``masks``      ``[n, K, S, S]``    bool; ``masks[i, k]`` = the pixels of image ``i`` where concept
                                   ``k`` is the visible (top-most) drawn thing
``presence``   ``[n, K]``          bool; ``presence[i, k] == masks[i, k].any()``
``relevance``  ``[n_classes, K]``  true relevance: 1 for the two key concepts of a class, 0 otherwise
=============  ==================  =================================================================

The concepts
------------
Three kinds, so that a method has to find more than one sort of feature:

* shapes, drawn as solid, light, nearly grey figures: ``disc``, ``square``, ``triangle``, ``ring``
  (an annulus: its hole shows what is below), ``cross``;
* colours, drawn as a saturated wobbly blob: ``red``, ``blue``;
* textures, drawn as a rounded square filled with a dark/light pattern: ``stripes``, ``checks``,
  ``dots``.

The default world uses eight of them (``DEFAULT_CONCEPTS``: four shapes, one colour, three
textures); ``cross`` and ``blue`` can be added with ``concepts=``. Every instance gets a random
position, scale (``scale`` is the radius as a fraction of ``S``), rotation, pattern phase and
colour jitter; the background is a random dark, slightly tinted grey. Gaussian luminance noise
(``noise``: one value per pixel, the same on the three channels) is added to the whole image after
drawing, then the image is clipped to [0, 1].

The classes
-----------
The concepts are put on a cycle that alternates shapes with the other kinds (for the default:
disc, red, square, stripes, triangle, checks, ring, dots). Each edge of the cycle is a candidate
class; the classes are first every other edge (a perfect matching, so every concept is key for some
class) and then the edges in between, which overlap the first ones. With the default
``n_classes=6`` the classes are

    disc+red, square+stripes, triangle+checks, ring+dots, red+square, stripes+triangle

so ``red``, ``square``, ``stripes`` and ``triangle`` are each key for two classes: seeing one of
them says nothing about which of its two classes the image is. The other keys also appear as
distractors in other classes, so no single concept identifies a class: the model must find both.

The class rule: an image of class ``c`` contains both key concepts of ``c``. Each other concept is
then added as a distractor with probability ``distractor_prob`` (at most ``max_distractors`` per
image), trying them in a random order and skipping any that would complete the key pair of another
class, so exactly one class's pair is ever present and labels are never ambiguous. (Distractors
are therefore independent of the class except for that exclusion.)

Layout: the image is cut into a ``grid x grid`` board; every object gets its own cell (random) and
is jittered around the cell's centre, so objects overlap only at their borders. Drawing order is a
random depth per instance (a z-buffer), so an object partly hides whatever it overlaps; masks record
the visible owner of each pixel.

Everything is vectorised over images: each concept is rasterised for all the images that contain
it at once, on a small patch of rotated, scaled coordinates around its centre, and composited into
flat image buffers with scatters. The only Python loops run over the ``K`` concepts (and over
chunks of 256 images, to keep buffers in cache).

The model trained on this world (:func:`conceptlens.world.cnn.trained_model`) can only tell its
classes apart by finding both key concepts, so a faithful explanation of class ``c`` must point at the
two concepts of ``relevance[c]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from conceptlens._check import check_float, check_int, did_you_mean
from conceptlens.errors import ParameterError
from conceptlens.io.presets import Preset

__all__ = [
    "ALL_CONCEPTS",
    "DEFAULT_CONCEPTS",
    "MEAN",
    "STD",
    "ConceptWorld",
    "Preset",
]

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

#: concept name -> kind; the order is the order of the shapes/others lists used to build the cycle.
ALL_CONCEPTS: dict[str, str] = {
    "disc": "shape",
    "square": "shape",
    "triangle": "shape",
    "ring": "shape",
    "cross": "shape",
    "red": "colour",
    "blue": "colour",
    "stripes": "texture",
    "checks": "texture",
    "dots": "texture",
}
DEFAULT_CONCEPTS: tuple[str, ...] = ("disc", "square", "triangle", "ring", "red", "stripes", "checks", "dots")

# Farthest any concept reaches from its centre, in units of its radius (the triangle's vertices).
_EXTENT = 1.3
# images rendered per chunk: small enough that the flat buffers stay in cache
_CHUNK = 256


# --------------------------------------------------------------------------------------------------
# rasterisers: (a, b, ph) -> (inside [m,P,P] bool, tone [m,P,P] bool or None)
# a, b [m,P,P] are rotated pixel-centre coordinates divided by the radius (the unit disc is the
# instance's nominal extent); ph [m,2] are pattern phases in [0, 1); tone picks the light (True) or
# dark (False) colour of a texture.
# --------------------------------------------------------------------------------------------------
_Raster = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _disc(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, None]:
    return a * a + b * b <= 1.0, None


def _square(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, None]:
    # half side 0.8 gives about the area of the unit disc (2.56 vs 3.14)
    return torch.maximum(a.abs(), b.abs()) <= 0.8, None


_SIN30, _COS30 = 0.5, math.sqrt(3.0) / 2.0


def _triangle(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, None]:
    # equilateral, inradius 0.65 (circumradius 1.3, so its area is not far below the disc's): inside
    # the half-planes with normals at 30, 150 and 270 degrees
    lim = 0.65
    inside = (b >= -lim) & (_COS30 * a + _SIN30 * b <= lim) & (_SIN30 * b - _COS30 * a <= lim)
    return inside, None


def _ring(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, None]:
    rho2 = a * a + b * b
    return (rho2 <= 1.0) & (rho2 >= 0.55**2), None


def _cross(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, None]:
    aa, bb = a.abs(), b.abs()
    return ((aa <= 0.3) & (bb <= 1.0)) | ((bb <= 0.3) & (aa <= 1.0)), None


def _blob(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, None]:
    # a three-lobed wobbly outline; the instance's rotation turns the lobes
    rho = torch.sqrt(a * a + b * b)
    phi = torch.atan2(b, a)
    return rho <= 0.82 + 0.18 * torch.cos(3.0 * phi), None


def _squircle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a2, b2 = a * a, b * b
    return a2 * a2 + b2 * b2 <= 1.0


def _stripes(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tone = torch.remainder(a * 2.2 + ph[:, 0, None, None], 1.0) < 0.5
    return _squircle(a, b), tone


def _checks(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.floor(a * 2.0 + ph[:, 0, None, None])
    j = torch.floor(b * 2.0 + ph[:, 1, None, None])
    tone = torch.remainder(i + j, 2.0) < 0.5
    return _squircle(a, b), tone


def _dots(a: torch.Tensor, b: torch.Tensor, ph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.remainder(a * 1.7 + ph[:, 0, None, None], 1.0) - 0.5
    v = torch.remainder(b * 1.7 + ph[:, 1, None, None], 1.0) - 0.5
    tone = u * u + v * v <= 0.3**2
    return _squircle(a, b), tone


_RASTERS: dict[str, _Raster] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "ring": _ring,
    "cross": _cross,
    "red": _blob,
    "blue": _blob,
    "stripes": _stripes,
    "checks": _checks,
    "dots": _dots,
}

# base colour and per-channel jitter half-width of the colour concepts
_HUES: dict[str, tuple[tuple[float, float, float], float]] = {
    "red": ((0.88, 0.12, 0.12), 0.1),
    "blue": ((0.12, 0.3, 0.9), 0.1),
}


def _concept_colours(name: str, u: torch.Tensor) -> torch.Tensor:
    """Colours of ``m`` instances of concept ``name`` from uniforms ``u [m,2,4]``: ``[m,2,3]``.

    Index 0 of dim 1 is the main colour, index 1 the second tone of a texture (unused otherwise).
    Levels keep shapes and light tones well above the background (0.15-0.5) and dark tones at or
    below its darkest.
    """
    kind = ALL_CONCEPTS[name]
    grey = u[..., :1]
    tint = (u[..., 1:] - 0.5) * 0.1
    if kind == "shape":
        return (0.65 + 0.35 * grey + tint).clamp(0.0, 1.0)
    if kind == "colour":
        base, jit = _HUES[name]
        b = torch.tensor(base, dtype=u.dtype, device=u.device)
        return (b + (u[..., 1:] - 0.5) * 2.0 * jit).clamp(0.0, 1.0)
    light = (0.75 + 0.25 * grey[:, :1] + tint[:, :1]).clamp(0.0, 1.0)
    dark = (0.12 * grey[:, 1:] + tint[:, 1:]).clamp(0.0, 1.0)
    return torch.cat([light, dark], dim=1)


def _pair_cycle(names: Sequence[str]) -> list[tuple[int, int]]:
    """Candidate key pairs (indices into ``names``): matching edges of the cycle first, then the rest."""
    shapes = [i for i, c in enumerate(names) if ALL_CONCEPTS[c] == "shape"]
    others = [i for i, c in enumerate(names) if ALL_CONCEPTS[c] != "shape"]
    order: list[int] = []
    for j in range(max(len(shapes), len(others))):
        order += shapes[j : j + 1] + others[j : j + 1]
    K = len(order)
    edges = [(order[i], order[(i + 1) % K]) for i in range(K)]
    return edges[0::2] + edges[1::2]


class ConceptWorld:
    """A world of images made of known concepts, with exact concept masks and true relevance.

    Parameters
    ----------
    seed : int
        Seeds the world's own generator, used by :meth:`sample` when no ``seed`` is given (it
        advances at each call). Does not change the distribution of images.
    size : int
        Image side ``S`` in pixels (>= 32).
    n_classes : int
        Number of classes, between ``ceil(K / 2)`` (every concept key exactly once) and ``K``
        (every concept key exactly twice). See the module docstring for how pairs are chosen.
    concepts : sequence of str, optional
        Names of the concepts, a subset of :data:`ALL_CONCEPTS` with at least 4 entries and at
        least one shape; default :data:`DEFAULT_CONCEPTS` (K = 8).
    distractor_prob : float
        Probability that each non-key concept is tried as a distractor, in ``[0, 1]``.
    max_distractors : int
        At most this many distractors per image.
    noise : float
        Standard deviation of the Gaussian luminance noise on the ``[0, 1]`` image (0 = clean: the
        background is then one flat colour per image).
    scale : (float, float)
        Range of instance radii as a fraction of ``size``.
    grid : int
        The layout board is ``grid x grid`` cells, one object per cell.

    Attributes
    ----------
    concept_names : list[str]
        The ``K`` concept names; index ``k`` of ``masks`` / ``presence`` / ``relevance``.
    concept_kinds : list[str]
        "shape", "colour" or "texture" per concept.
    class_names : list[str]
        ``"a+b"`` for each class.
    key_concepts : torch.Tensor
        ``[n_classes, 2]`` int64, the two key concept indices of each class.
    relevance : torch.Tensor
        ``[n_classes, K]`` float32, 1 for the key concepts of each class and 0 otherwise.
    """

    def __init__(
        self,
        seed: int = 0,
        size: int = 64,
        n_classes: int = 6,
        *,
        concepts: Sequence[str] | None = None,
        distractor_prob: float = 0.35,
        max_distractors: int = 3,
        noise: float = 0.04,
        scale: tuple[float, float] = (0.10, 0.15),
        grid: int = 3,
    ) -> None:
        names = list(DEFAULT_CONCEPTS if concepts is None else concepts)
        for c in names:
            if c not in ALL_CONCEPTS:
                raise ParameterError(
                    f"unknown concept {c!r}; choose among {', '.join(ALL_CONCEPTS)}"
                    + did_you_mean(c, ALL_CONCEPTS)
                )
        if len(set(names)) != len(names) or len(names) < 4:
            raise ParameterError(f"concepts must be at least 4 distinct names, got {names}")
        if not any(ALL_CONCEPTS[c] == "shape" for c in names):
            raise ParameterError("concepts must include at least one shape (disc, square, ...)")
        K = len(names)
        lo_c, hi_c = (K + 1) // 2, K
        seed = check_int("seed", seed)
        size = check_int("size", size, 32)
        n_classes = check_int("n_classes", n_classes, lo_c, maximum=hi_c,
                              hint=f"between {lo_c} (every concept key once) and {hi_c} for {K} concepts")
        grid = check_int("grid", grid, 2)
        max_distractors = check_int("max_distractors", max_distractors, 0,
                                    maximum=min(K - 2, grid * grid - 2),
                                    hint="at most K - 2 concepts and grid*grid - 2 free cells")
        distractor_prob = check_float("distractor_prob", distractor_prob, 0.0, maximum=1.0)
        noise = check_float("noise", noise, 0.0)
        try:
            lo, hi = (float(v) for v in scale)
        except (TypeError, ValueError):
            raise ParameterError(f"scale must be a pair of floats (min, max), got {scale!r}") from None
        if not 0.0 < lo <= hi <= 0.5 / grid * 1.5:
            raise ParameterError(
                f"scale must satisfy 0 < min <= max <= {0.75 / grid:.3f} (0.75 / grid, objects would "
                f"swamp their cells), got {scale!r}"
            )

        self.seed = int(seed)
        self.size = size
        self.n_classes = n_classes
        self.distractor_prob = float(distractor_prob)
        self.max_distractors = max_distractors
        self.noise = float(noise)
        self.scale = (lo, hi)
        self.grid = grid
        self.concept_names: list[str] = names
        self.concept_kinds: list[str] = [ALL_CONCEPTS[c] for c in names]
        pairs = _pair_cycle(names)[:n_classes]
        self.key_concepts = torch.tensor(pairs, dtype=torch.int64)
        self.class_names: list[str] = [f"{names[a]}+{names[b]}" for a, b in pairs]
        rel = torch.zeros(n_classes, K)
        rel[torch.arange(n_classes)[:, None], self.key_concepts] = 1.0
        self.relevance = rel
        self._generator = torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------------ description
    @property
    def n_concepts(self) -> int:
        """``K``, the number of concepts."""
        return len(self.concept_names)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-able dict: ``ConceptWorld(**world.config)`` rebuilds it."""
        return {
            "seed": self.seed,
            "size": self.size,
            "n_classes": self.n_classes,
            "concepts": list(self.concept_names),
            "distractor_prob": self.distractor_prob,
            "max_distractors": self.max_distractors,
            "noise": self.noise,
            "scale": list(self.scale),
            "grid": self.grid,
        }

    @property
    def preset(self) -> Preset:
        """Input size, normalisation and class names of the images :meth:`sample` returns."""
        return Preset(size=self.size, mean=MEAN, std=STD, classes=list(self.class_names))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"ConceptWorld({args})"

    # ------------------------------------------------------------------ sampling
    def sample(
        self, n: int, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``n`` labelled images with their ground-truth concept masks.

        Parameters
        ----------
        n : int
            Number of images (>= 1).
        seed : int, optional
            Same seed, bit-identical output. Without it the world's own generator is used and
            advanced, so successive calls differ but the sequence is fixed by the world's seed.

        Returns
        -------
        x : torch.Tensor
            ``[n, 3, S, S]`` float32 images normalised as ``(raw - MEAN) / STD`` (raw in [0, 1]).
        y : torch.Tensor
            ``[n]`` int64 class labels.
        masks : torch.Tensor
            ``[n, K, S, S]`` bool, the visible pixels of each concept (disjoint across ``K``).
        presence : torch.Tensor
            ``[n, K]`` bool, ``masks.any((2, 3))``.
        """
        n = check_int("n", n, 1)
        gen = self._generator if seed is None else torch.Generator().manual_seed(check_int("seed", seed))
        x, y, built, presence = self._draw(n, gen)
        masks = cast(torch.Tensor, built)  # with_masks=True (the default) always builds them
        return x, y, masks, presence

    def _choose(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``y [n]`` and which concepts are drawn ``drawn [n,K]`` following the class rule."""
        K = self.n_concepts
        A, B = self.key_concepts[:, 0], self.key_concepts[:, 1]
        ar = torch.arange(n)
        y = torch.randint(self.n_classes, (n,), generator=gen)
        drawn = torch.zeros(n, K, dtype=torch.bool)
        drawn[ar, A[y]] = True
        drawn[ar, B[y]] = True
        order = torch.rand(n, K, generator=gen).argsort(1)
        want = torch.rand(n, K, generator=gen) < self.distractor_prob
        count = torch.zeros(n, dtype=torch.int64)
        for j in range(K):  # step j tries each image's j-th concept in its own random order
            k = order[:, j]
            completes = ((A[None] == k[:, None]) & drawn[:, B]) | ((B[None] == k[:, None]) & drawn[:, A])
            ok = want[:, j] & ~drawn[ar, k] & (count < self.max_distractors) & ~completes.any(1)
            drawn[ar[ok], k[ok]] = True
            count += ok
        return y, drawn

    def _draw(
        self, n: int, gen: torch.Generator, with_masks: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Render ``n`` images: ``x [n,3,S,S]``, ``y [n]``, ``masks [n,K,S,S]`` (or None), ``presence [n,K]``.

        Per-instance parameters are drawn for all images first, then images are rendered in chunks
        of ``_CHUNK`` (a constant, so the output depends only on the generator) to keep the working
        buffers in cache.
        """
        S, K = self.size, self.n_concepts
        y, drawn = self._choose(n, gen)
        par = self._layout(n, drawn, gen)
        x = torch.empty(n, 3, S, S)
        masks = torch.empty(n, K, S, S, dtype=torch.bool) if with_masks else None
        presence = torch.empty(n, K, dtype=torch.bool)
        ks = torch.arange(K).view(1, K, 1, 1)
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            m = hi - lo
            owner = self._render({k: v[lo:hi] for k, v in par.items()}, drawn[lo:hi], x[lo:hi], gen)
            if masks is not None:
                torch.eq(owner.unsqueeze(1), ks, out=masks[lo:hi])
            # visible pixel count per (image, concept); bin 0 of each image is the background
            bins = (owner + 1).view(m, -1) + (K + 1) * torch.arange(m).unsqueeze(1)
            counts = torch.bincount(bins.view(-1), minlength=m * (K + 1)).view(m, K + 1)
            presence[lo:hi] = counts[:, 1:] > 0
        return x, y, masks, presence

    def _layout(self, n: int, drawn: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random parameters of every (image, concept) instance, drawn or not (fixed draw order).

        Returns ``centre [n,K,2]`` (x, y in pixels), ``r [n,K]`` radius in pixels, ``theta [n,K]``,
        ``depth [n,K]``, ``phase [n,K,2]``, ``colour [n,K,2,4]`` uniforms and ``bg [n,4]`` uniforms.
        """
        S, K, G = self.size, self.n_concepts, self.grid
        cells = torch.rand(n, G * G, generator=gen).argsort(1)
        r = S * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, K, generator=gen))
        theta = 2.0 * math.pi * torch.rand(n, K, generator=gen)
        jitter = torch.rand(n, K, 2, generator=gen) * 2.0 - 1.0
        depth = torch.rand(n, K, generator=gen)
        phase = torch.rand(n, K, 2, generator=gen)
        colour = torch.rand(n, K, 2, 4, generator=gen)
        bg = torch.rand(n, 4, generator=gen)
        # one cell per drawn object: the rank of a concept among the image's drawn ones picks a cell
        rank = (drawn.cumsum(1) - 1).clamp(min=0)
        cell = cells.gather(1, rank)
        step = S / G
        centre = torch.stack([cell % G, cell // G], dim=-1).to(torch.float32) * step + step / 2
        # jitter lets neighbours overlap by at most about half a radius each
        span = (step / 2 - 0.5 * r).clamp(min=0.0)
        centre = centre + jitter * span[..., None]
        centre = torch.minimum(torch.maximum(centre, 0.8 * r[..., None]), S - 0.8 * r[..., None])
        return {"centre": centre, "r": r, "theta": theta, "depth": depth, "phase": phase, "colour": colour,
                "bg": bg}

    def _render(
        self, par: dict[str, torch.Tensor], drawn: torch.Tensor, out: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Rasterise one chunk of ``m`` images into ``out [m,3,S,S]`` (normalised); return the owner map.

        ``owner [m,S,S]`` holds the index of the concept visible at each pixel, or -1 for background.
        Each concept is rasterised on a ``P x P`` patch around its centre for all images containing
        it, then composited through a z-buffer with scatters into flat buffers (pixel ``p`` of image
        ``i`` is ``i*S*S + p``); an image has at most one instance per concept, so the indices
        scattered for one concept never collide.
        """
        S = self.size
        SS = S * S
        n = drawn.shape[0]
        bgu = par["bg"]
        bg = (0.2 + 0.25 * bgu[:, :1] + (bgu[:, 1:] - 0.5) * 0.1).clamp(0.0, 1.0)  # [n,3]
        out.copy_(bg[:, :, None, None].expand(n, 3, S, S))
        out_flat = out.view(-1)
        zbuf = torch.full((n * SS,), -1.0)
        owner = torch.full((n * SS,), -1, dtype=torch.int64)

        R = int(math.ceil(_EXTENT * self.scale[1] * S)) + 1
        off = torch.arange(-R, R + 1, dtype=torch.float32)
        PP = off.numel() ** 2
        for k, name in enumerate(self.concept_names):
            idx = drawn[:, k].nonzero().squeeze(1)
            m = idx.numel()
            if m == 0:
                continue
            c = par["centre"][idx, k]  # [m,2] (x, y)
            ic = torch.floor(c)
            px = ic[:, 0, None, None] + off[None, None, :]  # [m,1,P] pixel column
            py = ic[:, 1, None, None] + off[None, :, None]  # [m,P,1] pixel row
            dx = px + 0.5 - c[:, 0, None, None]
            dy = py + 0.5 - c[:, 1, None, None]
            rk = par["r"][idx, k][:, None, None]
            th = par["theta"][idx, k]
            cos = torch.cos(th)[:, None, None] / rk
            sin = torch.sin(th)[:, None, None] / rk
            a = cos * dx + sin * dy  # [m,P,P]
            b = cos * dy - sin * dx
            inside, tone = _RASTERS[name](a, b, par["phase"][idx, k])
            valid = (px >= 0) & (px < S) & (py >= 0) & (py < S)
            pix = (py.clamp(0, S - 1) * S + px.clamp(0, S - 1)).long().view(m, PP)
            flat = pix + (idx * SS)[:, None]
            z = par["depth"][idx, k]
            upd = (inside & valid).view(m, PP) & (z[:, None] > zbuf[flat])
            u = upd.view(-1).nonzero().squeeze(1)
            row = u // PP
            sel = flat.view(-1)[u]
            zbuf[sel] = z[row]
            owner[sel] = k
            col = _concept_colours(name, par["colour"][idx, k])  # [m,2,3]
            if tone is None:
                rgb = col[row, 0]
            else:
                rgb = torch.where(tone.reshape(-1)[u, None], col[row, 0], col[row, 1])
            base = pix.view(-1)[u] + (idx * (3 * SS))[row]
            for ch in range(3):
                out_flat[base + ch * SS] = rgb[:, ch]

        if self.noise > 0:
            # luminance noise (one value for the three channels): realistic enough, a third of the cost
            out.add_(torch.randn(n, 1, S, S, generator=gen), alpha=self.noise)
        out.clamp_(0.0, 1.0)
        out.sub_(torch.tensor(MEAN).view(1, 3, 1, 1)).div_(torch.tensor(STD).view(1, 3, 1, 1))
        return owner.view(n, S, S)
