"""Tests of the synthetic concept world: its definition, its samples, their randomness and errors."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from conceptlens.errors import ConceptLensError, ParameterError
from conceptlens.world import concepts as syn
from conceptlens.world.concepts import ConceptWorld


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(seed=0)


@pytest.fixture(scope="module")
def batch(world: ConceptWorld) -> tuple[torch.Tensor, ...]:
    return world.sample(600, seed=11)


@pytest.fixture(scope="module")
def clean() -> tuple[ConceptWorld, tuple[torch.Tensor, ...]]:
    w = ConceptWorld(noise=0.0)
    return w, w.sample(300, seed=3)


def _raw(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(syn.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(syn.STD).view(1, 3, 1, 1)
    return x * std + mean


# ------------------------------------------------------------------ the world's definition
def test_concepts_and_classes(world: ConceptWorld) -> None:
    K, C = world.n_concepts, world.n_classes
    assert K >= 8
    assert set(world.concept_kinds) == {"shape", "colour", "texture"}
    assert len(world.class_names) == C and 4 <= C <= 6
    assert world.key_concepts.shape == (C, 2) and world.key_concepts.dtype == torch.int64
    # every concept is key for some class, pairs are distinct and made of two different concepts
    assert set(world.key_concepts.flatten().tolist()) == set(range(K))
    assert len({tuple(sorted(p)) for p in world.key_concepts.tolist()}) == C
    assert (world.key_concepts[:, 0] != world.key_concepts[:, 1]).all()
    # overlapping pairs: some concept is key for two classes, so it cannot name a class alone
    assert torch.bincount(world.key_concepts.flatten(), minlength=K).max() == 2
    expected = torch.zeros(C, K)
    for c, (a, b) in enumerate(world.key_concepts.tolist()):
        expected[c, a] = expected[c, b] = 1.0
        assert world.class_names[c] == f"{world.concept_names[a]}+{world.concept_names[b]}"
    assert torch.equal(world.relevance, expected)


def test_config_round_trip(world: ConceptWorld) -> None:
    w2 = ConceptWorld(**world.config)
    assert w2.config == world.config
    assert torch.equal(w2.sample(4, seed=1)[0], world.sample(4, seed=1)[0])
    p = world.preset
    assert p.size == 64 and tuple(p.mean) == syn.MEAN and tuple(p.std) == syn.STD
    assert list(p.classes) == world.class_names


@pytest.mark.parametrize("n_classes", [5, 8])
def test_other_class_counts_cover_all_concepts(n_classes: int) -> None:
    w = ConceptWorld(n_classes=n_classes, concepts=syn.ALL_CONCEPTS.keys())
    counts = torch.bincount(w.key_concepts.flatten(), minlength=w.n_concepts)
    assert (counts >= 1).all()
    _, y, _, pres = w.sample(200, seed=0)
    full = pres[:, w.key_concepts[:, 0]] & pres[:, w.key_concepts[:, 1]]
    assert torch.equal(full, nn.functional.one_hot(y, n_classes).bool())


# ------------------------------------------------------------------ samples
def test_shapes_and_dtypes(world: ConceptWorld, batch: tuple[torch.Tensor, ...]) -> None:
    x, y, masks, presence = batch
    n, K, S = 600, world.n_concepts, world.size
    assert x.shape == (n, 3, S, S) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (n,) and y.dtype == torch.int64
    assert masks.shape == (n, K, S, S) and masks.dtype == torch.bool
    assert presence.shape == (n, K) and presence.dtype == torch.bool
    assert y.min() >= 0 and y.max() < world.n_classes
    assert len(torch.unique(y)) == world.n_classes
    # normalised as documented: raw pixels lie in [0, 1]
    raw = _raw(x)
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert abs(float(raw.mean()) - 0.5) < 0.25


def test_presence_is_any_of_mask(batch: tuple[torch.Tensor, ...]) -> None:
    _, _, masks, presence = batch
    assert torch.equal(presence, masks.flatten(2).any(2))


def test_masks_do_not_overlap(batch: tuple[torch.Tensor, ...]) -> None:
    _, _, masks, _ = batch
    assert int(masks.sum(1).max()) == 1


def test_labels_follow_the_class_rule(world: ConceptWorld, batch: tuple[torch.Tensor, ...]) -> None:
    _, y, _, presence = batch
    A, B = world.key_concepts[:, 0], world.key_concepts[:, 1]
    complete = presence[:, A] & presence[:, B]  # [n, n_classes]
    # both keys of its own class are visible, and no other class's pair is complete
    assert torch.equal(complete, nn.functional.one_hot(y, world.n_classes).bool())
    # distractors do occur (otherwise a single key would name the class)
    n_distractors = presence.sum(1) - 2
    assert n_distractors.max() >= 2 and (n_distractors == 0).any()


def test_keys_stay_well_visible(world: ConceptWorld, batch: tuple[torch.Tensor, ...]) -> None:
    _, y, masks, _ = batch
    area = masks.flatten(2).sum(2)  # [n, K]
    keys = world.key_concepts[y]  # [n, 2]
    key_area = area.gather(1, keys)
    # radius >= 0.10 * 64 = 6.4 px: even a triangle covers ~90 px; occlusion only nibbles at borders
    assert int(key_area.min()) >= 40


def test_masks_cover_exactly_the_drawn_pixels(clean: tuple[ConceptWorld, tuple[torch.Tensor, ...]]) -> None:
    w, (x, _, masks, _) = clean
    raw = _raw(x).flatten(2)  # [n, 3, S*S]
    union = masks.any(1).flatten(1)  # [n, S*S]
    # the background of an image is one colour (noise=0): take it at its first uncovered pixel
    first_bg = (~union).float().argmax(1)
    bg = raw.gather(2, first_bg.view(-1, 1, 1).expand(-1, 3, 1))  # [n, 3, 1]
    differs = (raw - bg).abs().amax(1) > 1e-6  # [n, S*S] pixel differs from the background
    assert not (~union).all(1).any()  # every image has drawn pixels
    assert torch.equal(differs, union)


def test_each_mask_holds_one_instance_colour(clean: tuple[ConceptWorld, tuple[torch.Tensor, ...]]) -> None:
    w, (x, _, masks, presence) = clean
    raw = _raw(x)
    checked = 0
    for i in range(40):
        for k in presence[i].nonzero().flatten().tolist():
            cols = raw[i][:, masks[i, k]].T  # [pixels, 3]
            n_colours = len(torch.unique((cols * 1e5).round(), dim=0))
            # shapes and colour blobs are solid; textures have exactly a light and a dark tone
            expect = 1 if w.concept_kinds[k] != "texture" else 2
            assert n_colours <= expect, (i, w.concept_names[k], n_colours)
            checked += 1
    assert checked > 80


@pytest.mark.parametrize(
    "name, area",
    [
        ("disc", math.pi),
        ("square", 1.6**2),
        ("triangle", 3 * math.sqrt(3) * 0.65**2),
        ("ring", math.pi * (1 - 0.55**2)),
        ("cross", 2 * (0.6 * 2.0) - 0.6**2),
        ("stripes", 4 * math.gamma(1.25) ** 2 / math.gamma(1.5)),  # the squircle |a|^4 + |b|^4 <= 1
    ],
)
def test_raster_areas_match_geometry(name: str, area: float) -> None:
    t = torch.linspace(-1.5, 1.5, 1201)
    step = float(t[1] - t[0])
    b, a = torch.meshgrid(t, t, indexing="ij")
    inside, _ = syn._RASTERS[name](a[None], b[None], torch.zeros(1, 2))
    assert float(inside.sum()) * step**2 == pytest.approx(area, rel=0.01)


def test_textures_are_half_light_or_dotted() -> None:
    t = torch.linspace(-1.0, 1.0, 801)
    b, a = torch.meshgrid(t, t, indexing="ij")
    ph = torch.tensor([[0.3, 0.7]])
    fractions = {}
    for name in ("stripes", "checks", "dots"):
        inside, tone = syn._RASTERS[name](a[None], b[None], ph)
        fractions[name] = float(tone[inside].float().mean())
    assert fractions["stripes"] == pytest.approx(0.5, abs=0.05)
    assert fractions["checks"] == pytest.approx(0.5, abs=0.05)
    assert fractions["dots"] == pytest.approx(math.pi * 0.3**2, abs=0.05)


# ------------------------------------------------------------------ randomness
def test_same_seed_same_tensors_different_seed_different(world: ConceptWorld) -> None:
    a = world.sample(40, seed=5)
    b = ConceptWorld(seed=99).sample(40, seed=5)  # the world's own seed does not matter when seeded
    c = world.sample(40, seed=6)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[2], c[2])


def test_unseeded_calls_advance_a_reproducible_stream() -> None:
    w1, w2 = ConceptWorld(seed=1), ConceptWorld(seed=1)
    first, second = w1.sample(8)[0], w1.sample(8)[0]
    assert not torch.equal(first, second)
    assert torch.equal(w2.sample(8)[0], first) and torch.equal(w2.sample(8)[0], second)
    assert not torch.equal(ConceptWorld(seed=2).sample(8)[0], first)


def test_chunked_rendering_matches_whole(world: ConceptWorld) -> None:
    # more images than one rendering chunk: still every image follows the rule and masks match
    n = syn._CHUNK + 17
    x, y, masks, presence = world.sample(n, seed=2)
    assert x.shape[0] == n and torch.equal(presence, masks.flatten(2).any(2))
    assert not torch.equal(x[:17], x[syn._CHUNK :])


def test_global_rng_untouched(world: ConceptWorld) -> None:
    state = torch.get_rng_state()
    world.sample(5, seed=1)
    world.sample(5)
    assert torch.equal(state, torch.get_rng_state())


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_classes": 3}, "n_classes"),
        ({"n_classes": 9}, "n_classes"),
        ({"size": 16}, "size"),
        ({"concepts": ["disc", "sqare", "ring", "red"]}, "did you mean 'square'"),
        ({"concepts": ["red", "blue", "dots", "checks"]}, "shape"),
        ({"distractor_prob": 1.5}, "distractor_prob"),
        ({"max_distractors": 9}, "max_distractors"),
        ({"noise": -0.1}, "noise"),
        ({"scale": (0.2, 0.1)}, "scale"),
        ({"scale": (0.1,)}, "scale"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, words: str) -> None:
    with pytest.raises(ParameterError, match=words):
        ConceptWorld(**kwargs)


@pytest.mark.parametrize("n, seed", [(0, None), (2.5, None), (True, None), (3, "a"), (3, 1.0)])
def test_bad_sample_arguments_raise(world: ConceptWorld, n, seed) -> None:
    with pytest.raises(ConceptLensError, match="n must|seed must"):
        world.sample(n, seed=seed)


# ------------------------------------------------------------------ speed
def test_sampling_speed_is_measured(world: ConceptWorld, record_property) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world.sample(256, seed=0)  # warm-up
        best_wall, best_cpu = math.inf, math.inf
        for r in range(3):
            t, c = time.perf_counter(), time.process_time()
            world.sample(2000, seed=r)
            best_wall = min(best_wall, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
    finally:
        torch.set_num_threads(threads)
    rate, cpu_rate = 2000 / best_wall, 2000 / best_cpu
    record_property("images_per_second_1_thread", rate)
    record_property("images_per_cpu_second", cpu_rate)
    print(f"\nConceptWorld.sample: {rate:.0f} images/s wall, {cpu_rate:.0f} images per CPU second (1 thread)")
    # Images per CPU second do not depend on how busy the machine is (wall time does). One core renders
    # about 3,000 per CPU second at S = 64 with masks; per-image Python loops would be ten times slower.
    # The floor, a third of that, catches such a regression without failing on a slower CPU.
    assert cpu_rate >= 1000
