"""Exact attribute checker for images of the synthetic shapes world.

Plain image processing, independent of any trained network:

1. the background colour is the median of the border pixels;
2. foreground pixels are those far (RGB distance > :data:`FG_THRESHOLD`)
   from the background; 8-connected components above a minimum area are
   the objects;
3. every object's colour is the median of its core pixels, named by the
   nearest palette colour; a soft coverage map (alpha) is obtained by
   projecting every pixel on the background->object colour segment (in a
   luma-weighted opponent colour space, as compression blurs chroma most);
4. the shape is the template (circle, square, triangle, diamond, cross)
   whose coverage, fitted to the object's alpha moments (centroid and
   variances) and optionally blurred, has the highest soft IoU with the
   alpha map;
5. size, region and relations follow from the fitted bounding box.

:func:`check` compares the detections with what a caption (or a scene)
states; :func:`accuracy` aggregates over a batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from snapfusion.data.captions import CaptionSpec, parse_caption, spec_from_scene
from snapfusion.data.scene import COLOR_NAMES, COLORS, REGIONS, SHAPES, SIZE_THRESHOLD, Scene
from snapfusion.data.world import shape_coverage

__all__ = [
    "CheckResult",
    "DetectedObject",
    "Detection",
    "accuracy",
    "check",
    "detect",
]

# RGB distance from the background above which a pixel is foreground.
FG_THRESHOLD = 40.0
# Components smaller than this fraction of the image are ignored (noise).
MIN_AREA_FRACTION = 0.003
# At most this many components (the largest) are analysed.
MAX_COMPONENTS = 8
# Gaussian blurs (pixels) applied to the shape templates; the best fit counts,
# which keeps shape recognition stable on soft or compressed images.
TEMPLATE_BLURS: tuple[float, ...] = (0.0, 0.8)
# Weight of the chroma axes against luma when measuring coverage.
CHROMA_WEIGHT = 0.5
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 4096

_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)
_REGION_NAMES = tuple(REGIONS)
_REGION_ANCHORS = np.array([REGIONS[r] for r in _REGION_NAMES], dtype=np.float64)
_EIGHT = np.ones((3, 3), dtype=bool)
# RGB -> (luma, weighted blue-difference, weighted red-difference), columns.
_OPPONENT = (
    np.array(
        [
            [0.299, 0.587, 0.114],
            [-0.168736 * CHROMA_WEIGHT, -0.331264 * CHROMA_WEIGHT, 0.5 * CHROMA_WEIGHT],
            [0.5 * CHROMA_WEIGHT, -0.418688 * CHROMA_WEIGHT, -0.081312 * CHROMA_WEIGHT],
        ],
        dtype=np.float32,
    ).T
)


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image.

    Attributes:
        color: Nearest palette colour name of the object's core pixels.
        rgb: Median RGB of the core pixels, float ``(3,)``.
        shape: Best matching shape template.
        shape_scores: Soft IoU of the alpha map with every shape template.
        size: ``"small"`` or ``"big"`` from the fitted extent.
        cx: Centre of the fitted bounding box, fraction of the width.
        cy: Centre of the fitted bounding box, fraction of the height.
        extent: Larger side of the fitted bounding box, fraction of the image side.
        area: Soft area (sum of alpha) in pixels.
    """

    color: str
    rgb: tuple[float, float, float]
    shape: str
    shape_scores: dict[str, float]
    size: str
    cx: float
    cy: float
    extent: float
    area: float

    @property
    def region(self) -> str:
        """Nearest region anchor of the object's centre."""
        d = np.hypot(_REGION_ANCHORS[:, 0] - self.cx, _REGION_ANCHORS[:, 1] - self.cy)
        return _REGION_NAMES[int(np.argmin(d))]


@dataclass(frozen=True)
class Detection:
    """Everything :func:`detect` finds in an image.

    Attributes:
        background: Nearest palette colour name of the background.
        background_rgb: Estimated background RGB, float ``(3,)``.
        objects: Detected objects, largest first.
    """

    background: str
    background_rgb: tuple[float, float, float]
    objects: tuple[DetectedObject, ...]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of checking one image against a caption.

    Every attribute is ``True``/``False``, or ``None`` when the caption does
    not state it.

    Attributes:
        ok: All stated attributes hold (``None`` counts as holding).
        count: The number of objects matches.
        colors: Every stated object colour matches.
        shapes: Every object shape matches.
        sizes: Every stated object size matches.
        position: The stated relation (two objects) or region (one object) holds.
        background: The stated background colour matches.
        detection: What was found in the image.
        assignment: Index of the detected object matched to every caption
            object (``-1``: none).
    """

    ok: bool
    count: bool
    colors: bool | None
    shapes: bool
    sizes: bool | None
    position: bool | None
    background: bool | None
    detection: Detection
    assignment: tuple[int, ...]


ATTRIBUTES: tuple[str, ...] = ("count", "colors", "shapes", "sizes", "position", "background")


@lru_cache(maxsize=1)
def _shape_moments() -> dict[str, tuple[float, float, float, float]]:
    """(var_u, var_v, mean_v, bbox fill) of every shape, in units of its half extent."""
    n = 512
    cov = {
        s: shape_coverage(s, n / 2, n / 2, n / 2, n / 2, 0, 0, n, n, ss=2).astype(np.float64)
        for s in SHAPES
    }
    t = (np.arange(n) + 0.5 - n / 2) / (n / 2)
    out = {}
    for s, a in cov.items():
        m = a.sum()
        mu = (a.sum(0) * t).sum() / m
        mv = (a.sum(1) * t).sum() / m
        vu = (a.sum(0) * (t - mu) ** 2).sum() / m
        vv = (a.sum(1) * (t - mv) ** 2).sum() / m
        out[s] = (float(vu), float(vv), float(mv), float(a.mean()))
    return out


def _validate_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape [H, W, 3], got {image.shape}")
    h, w = image.shape[:2]
    if not (MIN_IMAGE_SIDE <= h <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= w <= MAX_IMAGE_SIDE):
        raise ValueError(
            f"image sides must be in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}], got {h}x{w}"
        )
    return image


@lru_cache(maxsize=8)
def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a small 2-D array, zero outside."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    h, w = a.shape
    p = np.zeros((h + 2 * r, w), dtype=np.float32)
    p[r : r + h] = a
    rows = k[0] * p[0:h]
    for i in range(1, len(k)):
        rows += k[i] * p[i : i + h]
    p = np.zeros((h, w + 2 * r), dtype=np.float32)
    p[:, r : r + w] = rows
    out = k[0] * p[:, 0:w]
    for i in range(1, len(k)):
        out += k[i] * p[:, i : i + w]
    return out


def _nearest_color(rgb: np.ndarray) -> str:
    d = ((_PALETTE - rgb[None, :]) ** 2).sum(1)
    return COLOR_NAMES[int(np.argmin(d))]


def _analyse_component(
    img: np.ndarray,
    dist: np.ndarray,
    labels: np.ndarray,
    label: int,
    box: tuple[slice, slice],
    bg: np.ndarray,
) -> DetectedObject | None:
    h, w = labels.shape
    y0 = max(0, box[0].start - 2)
    y1 = min(h, box[0].stop + 2)
    x0 = max(0, box[1].start - 2)
    x1 = min(w, box[1].stop + 2)
    lab = labels[y0:y1, x0:x1]
    own = lab == label
    from scipy import ndimage  # imported here: the rest of snapfusion.data needs no scipy

    region = ndimage.binary_dilation(own, structure=_EIGHT) & ((lab == 0) | own)
    d_own = dist[y0:y1, x0:x1][own]
    core_thr = 0.7 * float(np.percentile(d_own, 95))
    core = own & (dist[y0:y1, x0:x1] >= core_thr)
    win = img[y0:y1, x0:x1]
    rgb = np.median(win[core], axis=0)
    # Project on the background->object colour segment in a luma-weighted
    # opponent space: compression keeps luma sharper than chroma.
    direction = (rgb - bg) @ _OPPONENT
    norm2 = float(direction @ direction)
    if norm2 < 1e-6:
        return None
    alpha = (((win - bg) @ _OPPONENT) @ direction) / norm2
    alpha = np.clip(alpha, 0.0, 1.0) * region
    area = float(alpha.sum())
    if area <= 0.0:
        return None
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5
    ys = np.arange(y0, y1, dtype=np.float64) + 0.5
    px = alpha.sum(0)
    py = alpha.sum(1)
    mx = float((px * xs).sum() / area)
    my = float((py * ys).sum() / area)
    vx = float((px * (xs - mx) ** 2).sum() / area)
    vy = float((py * (ys - my) ** 2).sum() / area)

    scores: dict[str, float] = {}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for s, (vu, vv, mv, fill) in _shape_moments().items():
        best = (-1.0, (0.0, 0.0, 0.0, 0.0))
        for sigma in TEMPLATE_BLURS:
            # Blur adds sigma^2 to the variances of the alpha map.
            hx = max(float(np.sqrt(max(vx - sigma * sigma, 0.0) / vu)), 0.5)
            hy = max(float(np.sqrt(max(vy - sigma * sigma, 0.0) / vv)), 0.5)
            cx, cy = mx, my - mv * hy
            tmpl = shape_coverage(s, cx, cy, hx, hy, x0, y0, x1 - x0, y1 - y0, ss=4)
            # Template mass falling outside the analysed window counts as missed.
            outside = max(0.0, fill * 4.0 * hx * hy - float(tmpl.sum()))
            if sigma > 0:
                tmpl = _blur(tmpl, sigma)
            inter = float(np.minimum(tmpl, alpha).sum())
            union = float(np.maximum(tmpl, alpha).sum()) + outside
            score = inter / union if union > 0 else 0.0
            if score > best[0]:
                best = (score, (cx, cy, hx, hy))
        scores[s], boxes[s] = float(best[0]), best[1]
    shape = max(scores, key=scores.__getitem__)
    cx, cy, hx, hy = boxes[shape]
    extent = max(2 * hx / w, 2 * hy / h)
    return DetectedObject(
        color=_nearest_color(rgb),
        rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
        shape=shape,
        shape_scores=scores,
        size="big" if extent >= SIZE_THRESHOLD else "small",
        cx=float(cx / w),
        cy=float(cy / h),
        extent=float(extent),
        area=area,
    )


def detect(image: np.ndarray) -> Detection:
    """Find the background and the objects of an image.

    Args:
        image: uint8 RGB image ``[H, W, 3]``.

    Returns:
        The :class:`Detection`.

    Raises:
        TypeError: If ``image`` is not a uint8 numpy array.
        ValueError: If its shape is not ``[H, W, 3]`` with sides in 16..4096.
    """
    _validate_image(image)
    img = image.astype(np.float32)
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]], axis=0)
    bg = np.median(border, axis=0)
    diff = img - bg
    dist = np.sqrt((diff * diff).sum(-1))
    from scipy import ndimage

    labels, n = ndimage.label(dist > FG_THRESHOLD, structure=_EIGHT)
    objects: list[DetectedObject] = []
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        areas[0] = 0
        min_area = max(4.0, MIN_AREA_FRACTION * h * w)
        keep = [int(k) for k in np.argsort(-areas) if areas[k] >= min_area][:MAX_COMPONENTS]
        boxes = ndimage.find_objects(labels)
        for k in keep:
            obj = _analyse_component(img, dist, labels, k, boxes[k - 1], bg)
            if obj is not None:
                objects.append(obj)
    return Detection(
        background=_nearest_color(bg),
        background_rgb=(float(bg[0]), float(bg[1]), float(bg[2])),
        objects=tuple(objects),
    )


def _relation_holds(a: DetectedObject, b: DetectedObject, relation: str) -> bool:
    """Whether ``a`` lies `relation` of ``b`` (dominant axis and sign of the offset)."""
    dx, dy = float(a.cx - b.cx), float(a.cy - b.cy)
    if relation == "left":
        return dx < 0.0 and abs(dx) > abs(dy)
    if relation == "right":
        return dx > 0.0 and abs(dx) > abs(dy)
    if relation == "above":
        return dy < 0.0 and abs(dy) > abs(dx)
    if relation == "below":
        return dy > 0.0 and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def _holds(result: bool | None) -> bool:
    """An attribute holds when it is true or not stated."""
    return result is None or bool(result)


def _to_spec(target: str | Scene | CaptionSpec) -> CaptionSpec:
    if isinstance(target, CaptionSpec):
        return target
    if isinstance(target, Scene):
        return spec_from_scene(target)
    if isinstance(target, str):
        return parse_caption(target)
    raise TypeError(f"expected a caption, Scene or CaptionSpec, got {type(target).__name__}")


def _evaluate(
    spec: CaptionSpec, objs: Sequence[DetectedObject | None]
) -> tuple[bool | None, bool, bool | None, bool | None]:
    """Per-attribute results for one assignment (None entries: unmatched)."""
    colors_stated = any(o.color is not None for o in spec.objects)
    sizes_stated = any(o.size is not None for o in spec.objects)
    pairs = list(zip(spec.objects, objs))
    colors = all(d is not None and (o.color is None or d.color == o.color) for o, d in pairs)
    shapes = all(d is not None and d.shape == o.shape for o, d in pairs)
    sizes = all(d is not None and (o.size is None or d.size == o.size) for o, d in pairs)
    position: bool | None = None
    if spec.relation is not None:
        a, b = objs[0], objs[1]
        position = a is not None and b is not None and _relation_holds(a, b, spec.relation)
    elif spec.region is not None:
        position = objs[0] is not None and objs[0].region == spec.region
    return (colors if colors_stated else None, shapes, sizes if sizes_stated else None, position)


def check(image: np.ndarray, target: str | Scene | CaptionSpec) -> CheckResult:
    """Check that an image shows what a caption (or scene) states.

    Caption objects are matched to detected objects by the assignment that
    satisfies the most attributes; the image passes if the object count is
    right and every stated attribute holds.

    Args:
        image: uint8 RGB image ``[H, W, 3]``.
        target: Caption text, :class:`~snapfusion.data.scene.Scene` or
            :class:`~snapfusion.data.captions.CaptionSpec`.

    Returns:
        The :class:`CheckResult`.

    Raises:
        TypeError: Wrong image type/dtype or target type.
        ValueError: Wrong image shape, or a caption that does not parse.
    """
    spec = _to_spec(target)
    det = detect(image)
    k = len(spec.objects)
    n = len(det.objects)
    # Every injective partial assignment of caption objects to detections
    # (-1: unmatched); full assignments score higher when they exist.
    candidates = [
        a
        for a in itertools.product(range(-1, n), repeat=k)
        if len({i for i in a if i >= 0}) == sum(i >= 0 for i in a)
    ]
    best: tuple[tuple[int, int], tuple[int, ...], tuple] | None = None
    for assign in candidates:
        objs = [det.objects[i] if i >= 0 else None for i in assign]
        res = _evaluate(spec, objs)
        all_ok = all(_holds(r) for r in res)
        score = 0
        for o, d in zip(spec.objects, objs):
            if d is not None:
                score += (o.color is None or d.color == o.color) + (d.shape == o.shape)
                score += o.size is None or d.size == o.size
        score += res[3] is True
        key = (int(all_ok), score)
        if best is None or key > best[0]:
            best = (key, assign, res)
    assert best is not None
    _, assign, (colors, shapes, sizes, position) = best
    count = n == k
    background = None if spec.background is None else det.background == spec.background
    ok = count and all(_holds(r) for r in (colors, shapes, sizes, position, background))
    return CheckResult(
        ok=bool(ok),
        count=count,
        colors=colors,
        shapes=shapes,
        sizes=sizes,
        position=position,
        background=background,
        detection=det,
        assignment=tuple(assign),
    )


def accuracy(
    images: np.ndarray | Sequence[np.ndarray],
    captions: Sequence[str | Scene | CaptionSpec],
    progress: bool = False,
) -> dict[str, float]:
    """Per-attribute and overall accuracy of images against their captions.

    Args:
        images: uint8 images ``[n, H, W, 3]`` or a sequence of ``[H, W, 3]``.
        captions: ``n`` captions (or scenes / specs).
        progress: Show a progress bar.

    Returns:
        Mapping with the fraction of images passing every attribute in
        :data:`ATTRIBUTES` (among images whose caption states it), ``"overall"``
        (fraction fully correct) and ``"n"`` (number of images).
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be [n, H, W, 3], got shape {images.shape}")
    elif not isinstance(images, Sequence):
        raise TypeError(f"images must be an array or a sequence, got {type(images).__name__}")
    if isinstance(captions, (str, bytes)) or not isinstance(captions, Sequence):
        raise TypeError("captions must be a sequence of captions")
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(captions) == 0:
        raise ValueError("no images to evaluate")
    hits = {a: 0 for a in ATTRIBUTES}
    totals = {a: 0 for a in ATTRIBUTES}
    ok = 0
    items = zip(images, captions)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(captions), desc="checking", unit="img")
    for image, caption in items:
        r = check(image, caption)
        ok += r.ok
        for a in ATTRIBUTES:
            v = getattr(r, a)
            if v is not None:
                totals[a] += 1
                hits[a] += bool(v)
    out = {a: (hits[a] / totals[a] if totals[a] else float("nan")) for a in ATTRIBUTES}
    out["overall"] = ok / len(captions)
    out["n"] = float(len(captions))
    return out
