"""Synthetic shapes world (scenes, drawing, captions) and its attribute checker.

Only numpy, scipy and Pillow are needed; nothing here imports torch.

Typical use::

    from snapfusion.data import sample_batch, check, accuracy

    images, captions, scenes = sample_batch(64, seed, size=64, split="train")
    result = check(images[0], captions[0])   # CheckResult(ok=True, ...)
"""

from __future__ import annotations

from snapfusion.data.captions import (
    CaptionSpec,
    ObjectSpec,
    complete_caption,
    complete_spec,
    describe,
    mutate_spec,
    parse_caption,
    partial_caption,
    spec_from_scene,
)
from snapfusion.data.checker import CheckResult, DetectedObject, Detection, accuracy, check, detect
from snapfusion.data.scene import (
    BACKGROUNDS,
    COLORS,
    HELDOUT_PAIRS,
    REGIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    WorldObject,
)
from snapfusion.data.world import (
    draw_scene,
    draw_scenes,
    eval_prompts,
    make_rng,
    render_grid,
    sample_batch,
    sample_scene,
    shape_coverage,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "HELDOUT_PAIRS",
    "REGIONS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "CaptionSpec",
    "CheckResult",
    "DetectedObject",
    "Detection",
    "ObjectSpec",
    "Scene",
    "WorldObject",
    "accuracy",
    "check",
    "complete_caption",
    "complete_spec",
    "describe",
    "detect",
    "draw_scene",
    "draw_scenes",
    "eval_prompts",
    "make_rng",
    "mutate_spec",
    "parse_caption",
    "partial_caption",
    "render_grid",
    "sample_batch",
    "sample_scene",
    "shape_coverage",
    "spec_from_scene",
]
