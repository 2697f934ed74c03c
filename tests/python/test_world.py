"""Tests of the synthetic shapes world (snapfusion.data) and its attribute checker."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from snapfusion.data import (
    BACKGROUNDS,
    COLORS,
    HELDOUT_PAIRS,
    SHAPES,
    CaptionSpec,
    ObjectSpec,
    Scene,
    WorldObject,
    accuracy,
    check,
    complete_caption,
    complete_spec,
    describe,
    detect,
    draw_scene,
    eval_prompts,
    mutate_spec,
    parse_caption,
    partial_caption,
    render_grid,
    sample_batch,
    shape_coverage,
    spec_from_scene,
)
from snapfusion.data.captions import FULL_TEMPLATES_ONE, TEMPLATES_ONE, TEMPLATES_TWO
from snapfusion.data.scene import INVERSE_RELATION
from snapfusion.data.world import GAP, MARGIN, sample_scene


# ---------------------------------------------------------------- helpers


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    out = ndimage.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _noise(img: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    return np.clip(np.rint(img + rng.normal(0.0, std, img.shape)), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def clean_batch():
    return sample_batch(300, 2024, size=64, split="any")


# ---------------------------------------------------------------- world


def test_import_does_not_pull_torch():
    code = "import sys, snapfusion.data; assert 'torch' not in sys.modules"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)


def test_determinism_from_seed():
    a = sample_batch(12, 7, size=64, split="train")
    b = sample_batch(12, 7, size=64, split="train")
    assert np.array_equal(a[0], b[0])
    assert a[1] == b[1] and a[2] == b[2]
    c = sample_batch(12, 8, size=64, split="train")
    assert a[1] != c[1]
    # The split is mixed into an integer seed.
    d = sample_batch(12, 7, size=64, split="eval")
    assert a[2] != d[2]
    # A generator is consumed as is, reproducibly.
    e = sample_batch(12, np.random.default_rng(5), split="train")
    f = sample_batch(12, np.random.default_rng(5), split="train")
    assert np.array_equal(e[0], f[0]) and e[1] == f[1]
    # A batch equals drawing its scenes one by one.
    for img, scene in zip(a[0][:4], a[2][:4]):
        assert np.array_equal(img, draw_scene(scene, 64))


def test_batch_shapes_and_sizes():
    for size in (32, 64, 96):
        images, captions, scenes = sample_batch(5, 1, size=size)
        assert images.shape == (5, size, size, 3) and images.dtype == np.uint8
        assert len(captions) == len(scenes) == 5
    images, captions, scenes = sample_batch(0, 1)
    assert images.shape == (0, 64, 64, 3) and captions == [] and scenes == []


def test_heldout_split():
    frac = len(HELDOUT_PAIRS) / (len(COLORS) * len(SHAPES))
    assert 0.10 <= frac <= 0.15
    _, _, train = sample_batch(1500, 11, split="train")
    seen = {p for s in train for p in s.pairs}
    assert not seen & HELDOUT_PAIRS
    # Every other colour-shape pair does appear in training.
    allowed = {(c, s) for c in COLORS for s in SHAPES} - HELDOUT_PAIRS
    assert seen == allowed
    _, _, evals = sample_batch(300, 11, split="eval")
    assert not any(s.has_heldout_pair() for s in evals)
    _, _, held = sample_batch(300, 11, split="heldout")
    assert all(any(p in HELDOUT_PAIRS for p in s.pairs) for s in held)
    assert {p for s in held for p in s.pairs} >= HELDOUT_PAIRS
    captions, scenes = eval_prompts(50, seed=3, split="heldout")
    assert all(s.has_heldout_pair() for s in scenes)
    assert eval_prompts(50, seed=3, split="heldout")[0] == captions


def test_scene_layout_constraints():
    _, _, scenes = sample_batch(2000, 5, split="any")
    n_two = 0
    for s in scenes:
        assert s.background in BACKGROUNDS
        assert all(o.color != s.background for o in s.objects)
        for o in s.objects:
            h = o.extent / 2
            assert MARGIN - 1e-9 <= o.cx - h and o.cx + h <= 1 - MARGIN + 1e-9
            assert MARGIN - 1e-9 <= o.cy - h and o.cy + h <= 1 - MARGIN + 1e-9
        if len(s.objects) == 2:
            n_two += 1
            a, b = s.objects
            assert a.pair != b.pair
            # Bounding boxes are apart by at least GAP along the relation axis,
            # which dominates the other axis.
            gap_x = abs(a.cx - b.cx) - (a.extent + b.extent) / 2
            gap_y = abs(a.cy - b.cy) - (a.extent + b.extent) / 2
            assert max(gap_x, gap_y) >= GAP - 1e-9
            dx, dy = b.cx - a.cx, b.cy - a.cy
            expected = {"left": dx > 2 * abs(dy), "right": -dx > 2 * abs(dy),
                        "above": dy > 2 * abs(dx), "below": -dy > 2 * abs(dx)}
            assert expected[s.relation]
    assert 800 < n_two < 1200


def test_drawn_area_matches_geometry():
    # Coverage of a shape integrates to its analytic area.
    size = 128
    for shape, fill in [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5),
                        ("diamond", 0.5), ("cross", 2 * 0.36 - 0.36 ** 2)]:
        cov = shape_coverage(shape, 50.3, 61.7, 20.2, 20.2, 0, 0, size, size, ss=8)
        expected = fill * (2 * 20.2) ** 2
        assert abs(cov.sum() - expected) < 0.01 * expected, shape
    # An object drawn on the background: per-pixel alpha sums to its area.
    obj = WorldObject("circle", "red", "big", 0.5, 0.5, 0.4)
    img = draw_scene(Scene((obj,), "white", region="center"), size=size)
    bg, fg = np.array(COLORS["white"], float), np.array(COLORS["red"], float)
    alpha = ((img - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
    assert abs(alpha.sum() - math.pi * (0.2 * size) ** 2) < 0.01 * math.pi * (0.2 * size) ** 2


def test_antialiasing_present():
    obj = WorldObject("circle", "blue", "big", 0.513, 0.487, 0.36)
    scene = Scene((obj,), "white", region="center")
    img = draw_scene(scene, 64)
    bg, fg = np.array(COLORS["white"]), np.array(COLORS["blue"])
    flat = img.reshape(-1, 3)
    pure = np.all(flat == bg, axis=1) | np.all(flat == fg, axis=1)
    # Edge pixels take intermediate values on the segment between the colours.
    mixed = flat[~pure]
    assert len(mixed) > 40
    t = ((mixed - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
    assert np.all((t > 0) & (t < 1))
    assert len(np.unique(np.round(t, 2))) > 10
    # Without supersampling there are only the two colours.
    hard = draw_scene(scene, 64, ss=1).reshape(-1, 3)
    assert np.all(np.all(hard == bg, axis=1) | np.all(hard == fg, axis=1))


# ---------------------------------------------------------------- captions


def test_captions_parse_back_for_every_template():
    rng = np.random.default_rng(0)
    _, _, scenes = sample_batch(400, 9, split="any")
    ones = [s for s in scenes if len(s.objects) == 1]
    twos = [s for s in scenes if len(s.objects) == 2]
    for t in range(len(TEMPLATES_ONE)):
        for s in ones[:40]:
            cap = describe(s, rng, template=t)
            assert cap.isascii() and cap == cap.lower() and len(cap.split()) < 30
            spec = parse_caption(cap)
            want = spec_from_scene(s)
            if t not in FULL_TEMPLATES_ONE:
                want = CaptionSpec(want.objects, want.background, None, None)
            assert spec == want, (cap, spec, want)
    for t in range(len(TEMPLATES_TWO)):
        for s in twos[:40]:
            cap = describe(s, rng, template=t)
            assert cap.isascii() and cap == cap.lower() and len(cap.split()) < 30
            assert parse_caption(cap).canonical() == spec_from_scene(s).canonical(), cap
    # Random templates as used for training.
    _, captions, scenes = sample_batch(300, 4, split="train")
    for cap, s in zip(captions, scenes):
        spec = parse_caption(cap).canonical()
        want = spec_from_scene(s).canonical()
        assert spec.objects == want.objects and spec.background == want.background
        assert spec.relation == want.relation and spec.region in (None, want.region)


def test_parse_handwritten_captions():
    red_big = ObjectSpec("circle", "red", "big")
    blue_small = ObjectSpec("square", "blue", "small")
    assert parse_caption(
        "a big red circle to the left of a small blue square on a white background"
    ) == CaptionSpec((red_big, blue_small), "white", "left", None)
    assert parse_caption("a small blue square on a white background") == CaptionSpec(
        (blue_small,), "white", None, None
    )
    assert parse_caption("red circle, big, on white") == CaptionSpec((red_big,), "white")
    assert parse_caption("there is a large red disk left of a little blue box") == CaptionSpec(
        (red_big, blue_small), None, "left", None
    )
    assert parse_caption("An Orange Plus beneath a gray rhombus") == CaptionSpec(
        (ObjectSpec("cross", "orange"), ObjectSpec("diamond", "grey")), None, "below"
    )
    assert parse_caption("a little green triangle at the top, black background") == CaptionSpec(
        (ObjectSpec("triangle", "green", "small"),), "black", None, "top"
    )
    assert parse_caption("a circle") == CaptionSpec((ObjectSpec("circle"),))


@pytest.mark.parametrize(
    "caption",
    [
        "",
        "   ",
        ", ,",
        "a red unicorn",
        "a purple circle on a red background with stripes",
        "a red circle left of a blue square above a green cross",
        "a red blue circle",
        "a big small red circle",
        "a red left of a blue square",
        "red circle on white background on a black background",
        "a red circle on the left to the right of a blue square",
        "a red circle at the top of a blue square",
        "background",
        "a caf\u00e9 circle",
    ],
)
def test_parse_rejects_bad_captions(caption):
    with pytest.raises(ValueError):
        parse_caption(caption)


def test_parse_rejects_non_strings():
    for bad in (None, 3, b"a red circle", ["a red circle"]):
        with pytest.raises(TypeError):
            parse_caption(bad)  # type: ignore[arg-type]


def test_partial_captions():
    """Partial captions leave out the background and per-object sizes, parse back to exactly
    what they state, are true of the image they were drawn with, and cost nothing by
    default: partial=0 draws the very captions of earlier versions."""
    rng = np.random.default_rng(1)
    _, _, scenes = sample_batch(200, 9, split="any")
    ones = [s for s in scenes if len(s.objects) == 1][:30]
    twos = [s for s in scenes if len(s.objects) == 2][:30]
    for s in ones + twos:
        want = spec_from_scene(s)
        for no_bg in (False, True):
            for no_size in ([False] * len(s.objects), [True] * len(s.objects), [True] + [False] * (len(s.objects) - 1)):
                cap = describe(s, rng, omit_size=no_size, omit_background=no_bg)
                assert cap.isascii() and ",," not in cap.replace(" ", "") and not cap.endswith(","), cap
                spec = parse_caption(cap)
                assert (spec.background is None) == no_bg, cap
                same_order = (spec.objects[0].shape, spec.objects[0].color) == (want.objects[0].shape,
                                                                                 want.objects[0].color)
                relation = spec.relation if same_order or spec.relation is None else INVERSE_RELATION[spec.relation]
                assert relation == want.relation and spec.region in (None, want.region), cap
                got = {(o.shape, o.color): o.size for o in spec.objects}
                for o, omitted in zip(want.objects, no_size):
                    assert got[(o.shape, o.color)] == (None if omitted else o.size), cap
    with pytest.raises(ValueError, match="entries"):
        describe(twos[0], rng, omit_size=[True])
    images, captions, scenes = sample_batch(300, 5, split="train", partial=0.5)
    specs = [parse_caption(c) for c in captions]
    n_bg = sum(sp.background is None for sp in specs)
    n_size = sum(o.size is None for sp in specs for o in sp.objects)
    n_obj = sum(len(sp.objects) for sp in specs)
    assert 0.4 < n_bg / len(specs) < 0.6 and 0.4 < n_size / n_obj < 0.6, (n_bg, n_size, n_obj)
    assert accuracy(images, captions)["overall"] == 1.0
    base = sample_batch(50, 5, split="train")
    assert base[1] == sample_batch(50, 5, split="train", partial=0.0)[1]
    assert all(parse_caption(c).background is not None for c in base[1])
    for bad in (-0.1, 1.5, True, "0.2", float("nan")):
        with pytest.raises(ValueError, match="partial"):
            sample_batch(2, 0, partial=bad)


def test_partial_caption_rewrites_full_captions():
    """partial_caption leaves out what it drew, keeps everything else, is still true of the
    image, returns the caption itself when nothing is left out, and rejects bad input."""
    images, captions, scenes = sample_batch(120, 4, split="train")
    rng = np.random.default_rng(2)
    parts = [partial_caption(c, rng, 0.5) for c in captions]
    n_bg = n_size = n_obj = 0
    for full, part in zip(captions, parts):
        a, b = parse_caption(full).canonical(), parse_caption(part).canonical()
        n_bg += b.background is None
        assert b.background in (None, a.background) and b.relation == a.relation and b.region == a.region
        assert [(o.shape, o.color) for o in a.objects] == [(o.shape, o.color) for o in b.objects], (full, part)
        for oa, ob in zip(a.objects, b.objects):
            assert ob.size in (None, oa.size)
            n_size += ob.size is None
            n_obj += 1
        if part == full:
            continue
        assert b.background is None or any(o.size is None for o in b.objects), (full, part)
    assert 0.35 < n_bg / len(parts) < 0.65 and 0.35 < n_size / n_obj < 0.65, (n_bg, n_size, n_obj)
    assert accuracy(images, parts)["overall"] == 1.0
    assert [partial_caption(c, rng, 0.0) for c in captions] == captions
    for c in [partial_caption(c, rng, 1.0) for c in captions[:20]]:
        spec = parse_caption(c)
        assert spec.background is None and all(o.size is None for o in spec.objects), c
    for bad in (-0.1, 1.5, True, "0.2", float("nan")):
        with pytest.raises(ValueError, match="probability"):
            partial_caption(captions[0], rng, bad)
    for not_full in ("a red circle above a small blue square", "a big red circle on the left", "hello"):
        with pytest.raises(ValueError):
            partial_caption(not_full, rng, 0.5)



def _stated_within(partial: CaptionSpec, full: CaptionSpec) -> bool:
    """Every attribute ``partial`` states, ``full`` states the same (objects in order)."""
    if (partial.relation, partial.region) != (full.relation, full.region):
        return False
    if partial.background not in (None, full.background) or len(partial.objects) != len(full.objects):
        return False
    return all(a.shape == b.shape and a.color in (None, b.color) and a.size in (None, b.size)
               for a, b in zip(partial.objects, full.objects))


def test_complete_caption_fills_in_only_what_is_left_out():
    """complete_caption states every colour, size and the background, keeps what the caption
    stated, never gives an object its background's colour, and leaves full captions and text
    outside the grammar untouched."""
    rng = np.random.default_rng(0)
    _, captions, _ = sample_batch(200, 6, split="any")
    parts = [partial_caption(c, rng, 0.7) for c in captions]
    parts += ["a red circle above a small blue square", "a circle", "a white circle at the top",
              "a circle to the left of a circle", "blue box, on white", "a small diamond under a cross"]
    for part in parts:
        done = complete_caption(part, rng)
        a, b = parse_caption(part), parse_caption(done)
        assert b.background in BACKGROUNDS and all(o.color and o.size for o in b.objects), (part, done)
        assert _stated_within(a, b), (part, done)
        assert all(o.color != b.background for o in b.objects if a.background is None), (part, done)
        if len(b.objects) == 2:
            assert b.objects[0] != b.objects[1] or a.objects[0] == a.objects[1], (part, done)
    for full in captions + ["hello world", "a red hexagon", "", "a big red circle on a red background"]:
        assert complete_caption(full, rng) is full
    again = np.random.default_rng(9), np.random.default_rng(9)
    assert [complete_caption(p, again[0]) for p in parts] == [complete_caption(p, again[1]) for p in parts]
    for bad_caption, bad_rng in ((3, rng), (None, rng), ("a circle", 0), ("a circle", None)):
        with pytest.raises(TypeError):
            complete_caption(bad_caption, bad_rng)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        complete_spec("a circle", rng)  # type: ignore[arg-type]


def test_complete_caption_draws_as_the_world_does():
    """What completion fills in has the world's distribution given what the caption states:
    compared with the scenes of the world's own sampler that agree with the caption (drawn
    by rejection), for a colour that is also a background (white: never the background of a
    white object) and one that is not."""
    rng = np.random.default_rng(1)
    world = np.random.default_rng([3, 3])
    for caption, n in (("a white circle", 600), ("a big red square", 600)):
        stated = parse_caption(caption)
        completed: dict[tuple[str, str], int] = {}
        for _ in range(n):
            spec = parse_caption(complete_caption(caption, rng))
            key = (spec.background, spec.objects[0].size)
            completed[key] = completed.get(key, 0) + 1
        drawn: dict[tuple[str, str], int] = {}
        while sum(drawn.values()) < n:
            full = spec_from_scene(sample_scene(world, "any"))
            if full.region is not None:
                full = CaptionSpec(objects=full.objects, background=full.background)
            if _stated_within(stated, full):
                key = (full.background, full.objects[0].size)
                drawn[key] = drawn.get(key, 0) + 1
        assert set(completed) == set(drawn), (caption, completed, drawn)
        for key in drawn:  # each cell holds 1/5 to 1/8 of n: 5 standard deviations apart at most
            p, q = completed[key] / n, drawn[key] / n
            assert abs(p - q) < 5 * math.sqrt(2 * q * (1 - q) / n), (caption, key, p, q)

def test_eval_prompts_are_fully_specified():
    captions, scenes = eval_prompts(100, seed=1)
    assert captions == eval_prompts(100, seed=1)[0]
    for cap, s in zip(captions, scenes):
        spec = parse_caption(cap)
        assert spec.canonical() == spec_from_scene(s).canonical()


# ---------------------------------------------------------------- checker


def test_checker_clean_accuracy_is_perfect(clean_batch):
    images, captions, scenes = clean_batch
    acc = accuracy(images, captions)
    assert acc["overall"] == 1.0, acc
    assert accuracy(images, scenes)["overall"] == 1.0
    # Both sizes and both object counts are covered.
    assert {o.size for s in scenes for o in s.objects} == {"small", "big"}
    assert {len(s.objects) for s in scenes} == {1, 2}
    # Detected positions agree with the scene to within a pixel.
    for img, s in zip(images[:50], scenes[:50]):
        r = check(img, s)
        for i, o in zip(r.assignment, s.objects):
            d = r.detection.objects[i]
            assert abs(d.cx - o.cx) * 64 < 1.0 and abs(d.cy - o.cy) * 64 < 1.0
            assert abs(d.extent - o.extent) * 64 < 1.5


def test_checker_other_resolutions():
    for size in (48, 128):
        images, captions, _ = sample_batch(60, 31, size=size, split="any")
        assert accuracy(images, captions)["overall"] == 1.0, size


def test_checker_handmade_scene():
    a = WorldObject("circle", "red", "big", 0.27, 0.5, 0.36)
    b = WorldObject("square", "blue", "small", 0.75, 0.45, 0.22)
    img = draw_scene(Scene((a, b), "white", relation="left"), 64)
    right = "a big red circle to the left of a small blue square on a white background"
    assert check(img, right).ok
    assert check(img, "a small blue box right of a large red disk").ok
    for wrong in (
        "a big red circle to the right of a small blue square on a white background",
        "a big red circle above a small blue square on a white background",
        "a big green circle to the left of a small blue square on a white background",
        "a big red triangle to the left of a small blue square on a white background",
        "a small red circle to the left of a small blue square on a white background",
        "a big red circle to the left of a small blue square on a black background",
        "a big red circle on a white background",
    ):
        assert not check(img, wrong).ok, wrong
    r = check(img, "a big red circle to the left of a small blue cross on a white background")
    assert not r.ok and not r.shapes and r.colors and r.sizes and r.position and r.count


def test_checker_degraded(clean_batch):
    images, captions, _ = clean_batch
    rng = np.random.default_rng(1)
    blurred_noisy = [_noise(_blur(x, 0.7), rng, 8.0) for x in images]
    acc = accuracy(blurred_noisy, captions)
    print(f"\nchecker accuracy, blur 0.7 + noise 8/255: {acc['overall']:.4f}")
    assert acc["overall"] >= 0.98, acc
    jpeg = [_jpeg(x, 75) for x in images]
    acc_jpeg = accuracy(jpeg, captions)
    print(f"checker accuracy, JPEG q75: {acc_jpeg['overall']:.4f}")
    assert acc_jpeg["overall"] >= 0.95, acc_jpeg


def test_checker_rejects_wrong_captions(clean_batch):
    images, _, scenes = clean_batch
    rng = np.random.default_rng(2)
    for attribute in ("color", "shape", "position", "size", "background", "count"):
        rejected = 0
        for img, s in zip(images[:150], scenes[:150]):
            spec = mutate_spec(spec_from_scene(s), attribute, rng)
            caption = describe(spec, rng, full=spec.region is not None)
            rejected += not check(img, caption).ok
        assert rejected / 150 >= 0.99, (attribute, rejected)


def test_checker_counts_missing_and_extra_objects():
    a = WorldObject("triangle", "yellow", "big", 0.5, 0.5, 0.36)
    img = draw_scene(Scene((a,), "black", region="center"), 64)
    r = check(img, "a big yellow triangle above a small red circle on a black background")
    assert not r.ok and not r.count and r.assignment.count(-1) == 1
    empty = np.full((64, 64, 3), COLORS["grey"], dtype=np.uint8)
    r = check(empty, "a red circle")
    assert not r.ok and not r.count and detect(empty).objects == ()
    assert detect(empty).background == "grey"


def test_checker_bad_input():
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(TypeError):
        check(img.astype(np.float32), "a red circle")
    with pytest.raises(TypeError):
        check(img.tolist(), "a red circle")  # type: ignore[arg-type]
    for shape in ((64, 64), (64, 64, 4), (8, 8, 3), (1, 64, 64, 3)):
        with pytest.raises(ValueError):
            check(np.zeros(shape, dtype=np.uint8), "a red circle")
    with pytest.raises(ValueError):
        check(img, "")
    with pytest.raises(ValueError):
        check(img, "a red dragon")
    with pytest.raises(TypeError):
        check(img, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        accuracy(np.zeros((2, 64, 64, 3), np.uint8), ["a red circle"])
    with pytest.raises(ValueError):
        accuracy(np.zeros((64, 64, 3), np.uint8), ["a red circle"])


def test_world_bad_input():
    with pytest.raises(ValueError):
        sample_batch(2, 0, size=8)
    with pytest.raises(ValueError):
        sample_batch(2, 0, size=100000)
    with pytest.raises(TypeError):
        sample_batch(2, 0, size=64.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sample_batch(-1, 0)
    with pytest.raises(ValueError):
        sample_batch(2, 0, split="validation")
    with pytest.raises(ValueError):
        sample_batch(2, -3)
    with pytest.raises(TypeError):
        sample_batch(2, 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sample_batch(2, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sample_batch(10**7, 0, size=1024)
    with pytest.raises(ValueError):
        WorldObject("hexagon", "red", "big", 0.5, 0.5, 0.3)
    with pytest.raises(ValueError):
        WorldObject("circle", "red", "big", float("nan"), 0.5, 0.3)
    with pytest.raises(ValueError):
        WorldObject("circle", "red", "huge", 0.5, 0.5, 0.3)
    obj = WorldObject("circle", "red", "big", 0.5, 0.5, 0.3)
    with pytest.raises(ValueError):
        Scene((obj,), "red", region="center")  # object colour equals background
    with pytest.raises(ValueError):
        Scene((obj,), "white")  # missing region
    with pytest.raises(ValueError):
        Scene((obj, obj, obj), "white", relation="left")
    with pytest.raises(TypeError):
        draw_scene("a red circle", 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        describe(CaptionSpec((ObjectSpec("circle"),), "white"))  # colour/size not stated


def test_render_grid():
    images, captions, _ = sample_batch(6, 3)
    sheet = render_grid(images, captions, cols=3, cell=96)
    assert sheet.mode == "RGB"
    assert sheet.size[0] == 3 * (96 + 4) + 4 and sheet.size[1] > 2 * 96
    arr = np.asarray(sheet)
    # The first tile is the first image, upscaled with nearest neighbour.
    expected = np.asarray(Image.fromarray(images[0]).resize((96, 96), Image.NEAREST))
    assert np.array_equal(arr[4 : 4 + 96, 4 : 4 + 96], expected)
    # Caption text (dark pixels) is drawn under the tile.
    assert (arr[4 + 96 :, 4 : 4 + 96] < 100).any()
    with pytest.raises(ValueError):
        render_grid(images, captions[:2])
    with pytest.raises(TypeError):
        render_grid(images.astype(np.float32), captions)


def test_throughput_report():
    # Measured and printed for information; not asserted.
    sample_batch(50, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    sample_batch(2000, 0, size=64)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    images, captions, _ = sample_batch(200, 1, size=64, split="any")
    c1 = time.process_time()
    for img, cap in zip(images, captions):
        check(img, cap)
    chk = time.process_time() - c1
    print(
        f"\nworld 64x64: {2000 / cpu:.0f} images/s (CPU time), {2000 / wall:.0f} images/s (wall); "
        f"checker: {200 / chk:.0f} images/s (CPU time)"
    )
