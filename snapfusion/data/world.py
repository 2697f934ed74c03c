"""Synthetic shapes world: random scenes, anti-aliased drawing, captions.

The world produces images of one or two flat shapes on a uniform background
together with a caption describing them, deterministically from a seed and
fast enough (thousands of 64x64 images per second on one core) to feed
training on the fly::

    images, captions, scenes = sample_batch(16, seed, size=64, split="train")

Splits:

* ``"train"``: no object is a held-out colour-shape pair
  (:data:`~snapfusion.data.scene.HELDOUT_PAIRS`); all caption templates.
* ``"eval"``: same distribution of scenes as ``"train"``, but captions state
  every attribute (region of single objects included).
* ``"heldout"``: at least one object is a held-out pair; full captions.
* ``"any"``: unconstrained pairs, all caption templates.

An integer seed is mixed with the split, so ``seed=0`` yields different
scenes for ``"train"`` and ``"eval"``.  Only numpy and Pillow are used.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np

from snapfusion.data.captions import (
    CaptionSpec,
    ObjectSpec,
    check_probability,
    describe,
    draw_omissions,
    mutate_spec,
    parse_caption,
    spec_from_scene,
)
from snapfusion.data.scene import (
    BACKGROUNDS,
    COLOR_NAMES,
    COLORS,
    CROSS_HALF_WIDTH,
    HELDOUT_PAIRS,
    REGION_JITTER,
    REGION_NAMES,
    REGIONS,
    RELATIONS,
    SHAPES,
    SIZE_EXTENT,
    SIZE_JITTER,
    SIZES,
    SPLITS,
    Scene,
    WorldObject,
)

__all__ = [
    "CaptionSpec",
    "ObjectSpec",
    "Scene",
    "WorldObject",
    "describe",
    "draw_scene",
    "draw_scenes",
    "eval_prompts",
    "make_rng",
    "mutate_spec",
    "parse_caption",
    "render_grid",
    "sample_batch",
    "sample_scene",
    "shape_coverage",
    "spec_from_scene",
]

MIN_SIZE = 16
MAX_SIZE = 1024
# Free border around every object and free gap between two objects
# (fractions of the image side).
MARGIN = 0.05
GAP = 0.08
_MAX_BATCH_BYTES = 1 << 31
_SPLIT_INDEX = {s: i for i, s in enumerate(SPLITS)}
_HELDOUT_SORTED = tuple(sorted(HELDOUT_PAIRS))
_PALETTE_F32 = {k: np.asarray(v, dtype=np.float32) for k, v in COLORS.items()}


def make_rng(rng: int | np.random.Generator, split: str = "train") -> np.random.Generator:
    """Normalise a seed or generator.

    Args:
        rng: A non-negative integer seed (mixed with ``split``) or a generator
            (used as is).
        split: One of :data:`~snapfusion.data.scene.SPLITS`.

    Returns:
        A numpy random generator.
    """
    if split not in _SPLIT_INDEX:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (bool, np.bool_)) or not isinstance(rng, (int, np.integer)):
        raise TypeError(f"rng must be an int seed or numpy Generator, got {type(rng).__name__}")
    if rng < 0:
        raise ValueError(f"seed must be non-negative, got {rng}")
    return np.random.default_rng([int(rng), _SPLIT_INDEX[split]])


# --------------------------------------------------------------------------
# Scene sampling


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sample_pair(
    rng: np.random.Generator, background: str, allow_heldout: bool
) -> tuple[str, str]:
    colors = [c for c in COLOR_NAMES if c != background]
    while True:
        pair = (_choice(rng, colors), _choice(rng, SHAPES))
        if allow_heldout or pair not in HELDOUT_PAIRS:
            return pair


def _sample_extent(rng: np.random.Generator, size: str) -> float:
    return SIZE_EXTENT[size] * (1.0 + SIZE_JITTER * (2.0 * rng.random() - 1.0))


def _layout_two(
    rng: np.random.Generator, relation: str, h0: float, h1: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres of two objects with half extents h0, h1 so that 0 is `relation` of 1."""
    # Work along the main axis with the object at the lower coordinate first.
    first_low = relation in ("left", "above")
    h_lo, h_hi = (h0, h1) if first_low else (h1, h0)
    lo = MARGIN + h_lo
    hi = 1.0 - MARGIN - h_hi
    s_min = h_lo + h_hi + GAP
    sep = s_min + (hi - lo - s_min) * rng.random()
    p_lo = lo + (hi - lo - sep) * rng.random()
    p_hi = p_lo + sep
    # Cross axis: near the middle, offset at most a third of the separation so
    # that the relation is unambiguous.
    mid = 0.4 + 0.2 * rng.random()
    d = (2.0 * rng.random() - 1.0) * sep / 3.0
    q_lo = float(np.clip(mid - d / 2, MARGIN + h_lo, 1.0 - MARGIN - h_lo))
    q_hi = float(np.clip(mid + d / 2, MARGIN + h_hi, 1.0 - MARGIN - h_hi))
    a_lo, a_hi = (p_lo, q_lo), (p_hi, q_hi)
    if relation in ("above", "below"):
        a_lo, a_hi = (q_lo, p_lo), (q_hi, p_hi)
    return (a_lo, a_hi) if first_low else (a_hi, a_lo)


def sample_scene(rng: int | np.random.Generator, split: str = "train") -> Scene:
    """Draw a random scene.

    Args:
        rng: Seed or generator (see :func:`make_rng`).
        split: ``"train"``, ``"eval"``, ``"heldout"`` or ``"any"``.

    Returns:
        A valid :class:`Scene`: objects never overlap and keep a margin from
        the border; two objects differ in colour or shape.
    """
    rng = make_rng(rng, split)
    background = _choice(rng, BACKGROUNDS)
    n_obj = 1 + int(rng.integers(2))
    allow = split in ("heldout", "any")
    pairs = [_sample_pair(rng, background, allow) for _ in range(n_obj)]
    if split == "heldout":
        options = [p for p in _HELDOUT_SORTED if p[0] != background]
        pairs[int(rng.integers(n_obj))] = options[int(rng.integers(len(options)))]
    if n_obj == 2:
        while pairs[0] == pairs[1]:
            pairs[1] = _sample_pair(rng, background, allow)
    sizes = [_choice(rng, SIZES) for _ in range(n_obj)]
    extents = [_sample_extent(rng, s) for s in sizes]
    if n_obj == 1:
        region = _choice(rng, REGION_NAMES)
        ax, ay = REGIONS[region]
        jx, jy = (2.0 * rng.random(2) - 1.0) * REGION_JITTER
        centres = [(ax + jx, ay + jy)]
        relation = None
    else:
        region = None
        relation = _choice(rng, RELATIONS)
        centres = list(_layout_two(rng, relation, extents[0] / 2, extents[1] / 2))
    objects = tuple(
        WorldObject(shape=p[1], color=p[0], size=s, cx=float(c[0]), cy=float(c[1]), extent=float(e))
        for p, s, c, e in zip(pairs, sizes, centres, extents)
    )
    return Scene(objects=objects, background=background, relation=relation, region=region)


# --------------------------------------------------------------------------
# Drawing


def shape_coverage(
    shape: str,
    cx: float,
    cy: float,
    hx: float,
    hy: float,
    x0: int,
    y0: int,
    width: int,
    height: int,
    ss: int = 4,
) -> np.ndarray:
    """Fraction of every pixel of a window covered by a shape (supersampled).

    Pixel ``(i, j)`` of the image spans ``[j, j+1) x [i, i+1)`` in pixel
    coordinates; the window starts at pixel ``(y0, x0)``.

    Args:
        shape: One of :data:`~snapfusion.data.scene.SHAPES`.
        cx: Centre of the shape's bounding box, x in pixels.
        cy: Centre of the shape's bounding box, y in pixels.
        hx: Half width of the bounding box in pixels.
        hy: Half height of the bounding box in pixels.
        x0: First column of the window.
        y0: First row of the window.
        width: Window width in pixels.
        height: Window height in pixels.
        ss: Supersampling factor per axis (``ss * ss`` samples per pixel).

    Returns:
        float32 array ``[height, width]`` of coverages in ``[0, 1]``.
    """
    if hx <= 0 or hy <= 0:
        raise ValueError("half extents must be positive")
    inv = 1.0 / ss
    u = ((x0 + (np.arange(width * ss, dtype=np.float32) + 0.5) * inv) - cx) / hx
    v = ((y0 + (np.arange(height * ss, dtype=np.float32) + 0.5) * inv) - cy) / hy
    u = u[None, :]
    v = v[:, None]
    au = np.abs(u)
    av = np.abs(v)
    if shape == "circle":
        inside = u * u + v * v <= 1.0
    elif shape == "square":
        inside = (av <= 1.0) & (au <= 1.0)
    elif shape == "triangle":
        # Apex at the top centre, base along the bottom edge.
        inside = (v <= 1.0) & (2.0 * au <= v + 1.0)
    elif shape == "diamond":
        inside = au + av <= 1.0
    elif shape == "cross":
        bu = au <= 1.0
        bv = av <= 1.0
        inside = ((au <= CROSS_HALF_WIDTH) & bv) | ((av <= CROSS_HALF_WIDTH) & bu)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if ss == 1:
        return inside.astype(np.float32)
    # Box-downsample: count the samples inside every pixel with small integer
    # adds (much faster than a strided multi-axis mean).
    x = inside.view(np.uint8).reshape(height, ss, width, ss)
    acc = x[:, 0].astype(np.uint16)
    for k in range(1, ss):
        acc += x[:, k]
    count = acc[..., 0].copy()
    for k in range(1, ss):
        count += acc[..., k]
    return count.astype(np.float32) * np.float32(1.0 / (ss * ss))


def _check_size(size: int, ss: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    if isinstance(ss, bool) or not isinstance(ss, (int, np.integer)):
        raise TypeError(f"ss must be an int, got {type(ss).__name__}")
    if not 1 <= ss <= 16:
        raise ValueError(f"ss must be in [1, 16], got {ss}")


def _draw_into(canvas: np.ndarray, scene: Scene, ss: int) -> None:
    size = canvas.shape[0]
    canvas[...] = _PALETTE_F32[scene.background]
    for o in scene.objects:
        cx, cy, h = o.cx * size, o.cy * size, 0.5 * o.extent * size
        x0, x1 = max(0, math.floor(cx - h)), min(size, math.ceil(cx + h))
        y0, y1 = max(0, math.floor(cy - h)), min(size, math.ceil(cy + h))
        if x1 <= x0 or y1 <= y0:
            continue
        a = shape_coverage(o.shape, cx, cy, h, h, x0, y0, x1 - x0, y1 - y0, ss)[..., None]
        win = canvas[y0:y1, x0:x1]
        win += a * (_PALETTE_F32[o.color] - win)


def draw_scene(scene: Scene, size: int = 64, ss: int = 4) -> np.ndarray:
    """Render a scene with anti-aliased edges.

    Args:
        scene: The scene.
        size: Image side in pixels (16..1024).
        ss: Supersampling factor per axis used for anti-aliasing.

    Returns:
        uint8 array ``[size, size, 3]`` (RGB).
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"expected a Scene, got {type(scene).__name__}")
    _check_size(size, ss)
    canvas = np.empty((size, size, 3), dtype=np.float32)
    _draw_into(canvas, scene, ss)
    return np.rint(canvas).astype(np.uint8)


def draw_scenes(scenes: Sequence[Scene], size: int = 64, ss: int = 4) -> np.ndarray:
    """Render several scenes.

    Args:
        scenes: Scenes to draw.
        size: Image side in pixels.
        ss: Supersampling factor per axis.

    Returns:
        uint8 array ``[len(scenes), size, size, 3]``.
    """
    _check_size(size, ss)
    n = len(scenes)
    if n * size * size * 3 > _MAX_BATCH_BYTES:
        raise ValueError(f"batch of {n} images of {size}x{size} is too large")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    canvas = np.empty((size, size, 3), dtype=np.float32)
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Scene):
            raise TypeError(f"expected a Scene, got {type(scene).__name__}")
        _draw_into(canvas, scene, ss)
        np.rint(canvas, out=canvas)
        out[i] = canvas
    return out


def sample_batch(
    n: int,
    rng: int | np.random.Generator,
    size: int = 64,
    split: str = "train",
    ss: int = 4,
    partial: float = 0.0,
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Sample scenes, draw them and caption them.

    Args:
        n: Number of samples (>= 0).
        rng: Integer seed (mixed with ``split``) or numpy generator.
        size: Image side in pixels (16..1024).
        split: ``"train"``, ``"eval"``, ``"heldout"`` or ``"any"``.
        ss: Supersampling factor per axis.
        partial: Probability that a caption leaves the background out, and,
            independently, that it leaves out each object's size (partial
            captions, which any background or size fits, teach a model to
            draw prompts that do not state them).  0 draws exactly what
            earlier versions drew.

    Returns:
        ``(images, captions, scenes)``: uint8 array ``[n, size, size, 3]``,
        ``n`` captions and ``n`` scenes.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    _check_size(size, ss)
    if n * size * size * 3 > _MAX_BATCH_BYTES:
        raise ValueError(f"batch of {n} images of {size}x{size} is too large")
    partial = check_probability(partial, "partial")
    gen = make_rng(rng, split)
    full = split in ("eval", "heldout")
    scenes: list[Scene] = []
    captions: list[str] = []
    for _ in range(n):
        scene = sample_scene(gen, split)
        scenes.append(scene)
        # draw the omissions only when asked: partial=0 keeps the generator's sequence
        no_bg, no_size = draw_omissions(gen, partial, len(scene.objects)) if partial else (False, False)
        captions.append(describe(scene, gen, full=full, omit_size=no_size, omit_background=no_bg))
    return draw_scenes(scenes, size, ss), captions, scenes


def eval_prompts(
    n: int, seed: int = 0, split: str = "eval"
) -> tuple[list[str], list[Scene]]:
    """Evaluation prompts with the scenes they describe (no drawing).

    Args:
        n: Number of prompts.
        seed: Non-negative integer seed.
        split: ``"eval"`` (training distribution) or ``"heldout"``.

    Returns:
        ``(captions, scenes)`` with fully specified captions.
    """
    if split not in ("eval", "heldout"):
        raise ValueError(f"split must be 'eval' or 'heldout', got {split!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    gen = make_rng(seed, split)
    scenes = [sample_scene(gen, split) for _ in range(n)]
    captions = [describe(s, gen, full=True) for s in scenes]
    return captions, scenes


# --------------------------------------------------------------------------
# Human-readable sample sheet


def render_grid(
    images: np.ndarray | Sequence[np.ndarray],
    captions: Sequence[str],
    cols: int = 4,
    cell: int = 160,
) -> "PIL.Image.Image":  # noqa: F821
    """Tile images with their captions underneath, for documentation.

    Args:
        images: uint8 images ``[n, H, W, 3]`` (or a sequence of ``[H, W, 3]``).
        captions: ``n`` captions.
        cols: Number of columns.
        cell: Displayed side of every image in pixels (nearest-neighbour
            upscaling).

    Returns:
        An RGB ``PIL.Image.Image``.
    """
    from PIL import Image, ImageDraw, ImageFont

    imgs = [np.asarray(im) for im in images]
    if len(imgs) != len(captions):
        raise ValueError(f"{len(imgs)} images but {len(captions)} captions")
    if not imgs:
        raise ValueError("no images to render")
    for im in imgs:
        if im.dtype != np.uint8:
            raise TypeError(f"images must be uint8, got {im.dtype}")
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"images must be [H, W, 3], got {im.shape}")
    if not isinstance(cols, int) or cols < 1:
        raise ValueError("cols must be a positive int")
    if not isinstance(cell, int) or not 16 <= cell <= 2048:
        raise ValueError("cell must be an int in [16, 2048]")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1, probe.textbbox((0, 0), "abcdefghij", font=font)[2] // 10)
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 2
    width_chars = max(8, (cell - 4) // char_w)
    wrapped = [textwrap.wrap(str(c), width_chars) or [""] for c in captions]
    text_h = line_h * max(len(w) for w in wrapped) + 4
    rows = -(-len(imgs) // cols)
    pad = 4
    sheet = Image.new(
        "RGB",
        (cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(sheet)
    for k, (im, lines) in enumerate(zip(imgs, wrapped)):
        r, c = divmod(k, cols)
        x = pad + c * (cell + pad)
        y = pad + r * (cell + text_h + pad)
        tile = Image.fromarray(im, "RGB").resize((cell, cell), Image.NEAREST)
        sheet.paste(tile, (x, y))
        for li, line in enumerate(lines):
            draw.text((x + 2, y + cell + 2 + li * line_h), line, fill=(0, 0, 0), font=font)
    return sheet
