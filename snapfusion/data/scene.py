"""Vocabulary and scene structures of the synthetic shapes world.

A scene holds one or two flat, axis-aligned shapes on a uniform background.
Everything here is plain Python; drawing lives in :mod:`snapfusion.data.world`
and the caption grammar in :mod:`snapfusion.data.captions`.

Coordinates are fractions of the image side: ``cx = 0`` is the left border,
``cx = 1`` the right border, ``cy = 0`` the top and ``cy = 1`` the bottom.
``extent`` is the side of the object's (square) bounding box, also as a
fraction of the image side.
"""

from __future__ import annotations

from dataclasses import dataclass

# Palette: names -> sRGB.  Every pair is at least ~100 apart in RGB distance,
# so colours stay distinguishable after blur, noise and JPEG compression.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 50),
    "green": (40, 170, 60),
    "cyan": (40, 210, 230),
    "blue": (40, 70, 220),
    "purple": (150, 40, 200),
    "pink": (250, 140, 200),
    "brown": (120, 70, 20),
    "white": (250, 250, 250),
    "grey": (130, 130, 130),
    "black": (20, 20, 20),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Background colours (a subset of the palette); an object never has the
# colour of its background.
BACKGROUNDS: tuple[str, ...] = ("white", "black", "grey", "blue", "yellow")

# Shapes are drawn axis-aligned inside a square bounding box; the triangle
# points up.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")

# Half thickness of the cross bars, in units of the half extent.
CROSS_HALF_WIDTH = 0.36

SIZES: tuple[str, ...] = ("small", "big")
# Nominal extent (bounding-box side / image side) of each size; the drawn
# extent is jittered by +-SIZE_JITTER (relative).
SIZE_EXTENT: dict[str, float] = {"small": 0.22, "big": 0.36}
SIZE_JITTER = 0.05
# Decision threshold used by the checker (midway between the two classes).
SIZE_THRESHOLD = 0.5 * (SIZE_EXTENT["small"] + SIZE_EXTENT["big"])

# Relation of the first object of a two-object scene to the second one.
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
}

# Regions of a single-object scene and their anchor points (cx, cy).
REGIONS: dict[str, tuple[float, float]] = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "center": (0.5, 0.5),
}
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)
REGION_JITTER = 0.03

# Colour-shape pairs that never occur in training scenes (8 of 60, 13 %).
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("orange", "cross"),
        ("yellow", "square"),
        ("green", "circle"),
        ("cyan", "diamond"),
        ("blue", "triangle"),
        ("purple", "square"),
        ("pink", "circle"),
    }
)

SPLITS: tuple[str, ...] = ("train", "eval", "heldout", "any")


@dataclass(frozen=True)
class WorldObject:
    """One object of a scene.

    Attributes:
        shape: One of :data:`SHAPES`.
        color: One of :data:`COLOR_NAMES`.
        size: ``"small"`` or ``"big"``.
        cx: Centre of the bounding box, fraction of the image width.
        cy: Centre of the bounding box, fraction of the image height.
        extent: Side of the square bounding box, fraction of the image side.
    """

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    extent: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        for name in ("cx", "cy", "extent"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if self.extent <= 0.0:
            raise ValueError("extent must be positive")

    @property
    def pair(self) -> tuple[str, str]:
        """The (colour, shape) pair of the object."""
        return (self.color, self.shape)


@dataclass(frozen=True)
class Scene:
    """A complete scene: background, one or two objects and their layout.

    Attributes:
        objects: One or two :class:`WorldObject`.
        background: Background colour name, one of :data:`BACKGROUNDS`.
        relation: For two objects, where ``objects[0]`` lies relative to
            ``objects[1]`` (one of :data:`RELATIONS`); ``None`` otherwise.
        region: For one object, the region of the image it lies in (one of
            :data:`REGION_NAMES`); ``None`` otherwise.
    """

    objects: tuple[WorldObject, ...]
    background: str
    relation: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(
            isinstance(o, WorldObject) for o in self.objects
        ):
            raise TypeError("objects must be a tuple of WorldObject")
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        if self.background not in COLORS:
            raise ValueError(f"unknown background colour {self.background!r}")
        if any(o.color == self.background for o in self.objects):
            raise ValueError("an object may not have the background colour")
        if len(self.objects) == 2:
            if self.relation not in RELATIONS:
                raise ValueError(f"two-object scene needs a relation, got {self.relation!r}")
            if self.region is not None:
                raise ValueError("two-object scenes have no region")
        else:
            if self.region not in REGIONS:
                raise ValueError(f"one-object scene needs a region, got {self.region!r}")
            if self.relation is not None:
                raise ValueError("one-object scenes have no relation")

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The (colour, shape) pairs of all objects."""
        return tuple(o.pair for o in self.objects)

    def has_heldout_pair(self) -> bool:
        """Whether any object is a held-out colour-shape combination."""
        return any(p in HELDOUT_PAIRS for p in self.pairs)
