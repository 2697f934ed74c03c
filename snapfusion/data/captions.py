"""Caption grammar of the synthetic shapes world: describe scenes, parse captions.

Captions are short lowercase ASCII sentences built from a few templates and
synonyms, e.g. ``"a big red circle to the left of a small blue square on a
white background"`` or ``"red disk, large, on the left, on white"``.  The
grammar is unambiguous: :func:`parse_caption` recovers exactly the attributes
a caption mentions (shape, colour and size of every object, the relation of
two objects or the region of a single object, and the background colour).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from snapfusion.data.scene import (
    BACKGROUNDS,
    COLOR_NAMES,
    COLORS,
    INVERSE_RELATION,
    RELATIONS,
    REGIONS,
    SHAPES,
    SIZES,
    Scene,
)

SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "big": ("big", "large")}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus"),
}
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    c: ((c, "gray") if c == "grey" else (c,)) for c in COLORS
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
REGION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle", "in the centre"),
}

# One-object templates; those containing {pos} mention the region.
TEMPLATES_ONE: tuple[str, ...] = (
    "a {s} {c} {sh} {pos} on a {bg} background",
    "a {s} {c} {sh} on a {bg} background",
    "{c} {sh}, {s}, {pos}, on {bg}",
    "{c} {sh}, {s}, on {bg}",
    "there is a {s} {c} {sh} {pos} on a {bg} background",
    "{bg} background with a {s} {c} {sh} {pos}",
    "a picture of a {s} {c} {sh} {pos} on a {bg} background",
    "a {s} {c} {sh} {pos}, {bg} background",
)
TEMPLATES_TWO: tuple[str, ...] = (
    "a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2} on a {bg} background",
    "there is a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2} on a {bg} background",
    "{c1} {sh1}, {s1}, {rel} {c2} {sh2}, {s2}, on {bg}",
    "on a {bg} background, a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2}",
    "a picture of a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2} on a {bg} background",
    "{bg} background with a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2}",
)
FULL_TEMPLATES_ONE: tuple[int, ...] = tuple(
    i for i, t in enumerate(TEMPLATES_ONE) if "{pos}" in t
)
# Templates of partial captions that leave the background out (any background fits them).
TEMPLATES_ONE_NO_BG: tuple[str, ...] = (
    "a {s} {c} {sh} {pos}",
    "a {s} {c} {sh}",
    "{c} {sh}, {s}, {pos}",
    "{c} {sh}, {s}",
    "there is a {s} {c} {sh} {pos}",
    "a picture of a {s} {c} {sh} {pos}",
)
TEMPLATES_TWO_NO_BG: tuple[str, ...] = (
    "a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2}",
    "there is a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2}",
    "{c1} {sh1}, {s1}, {rel} {c2} {sh2}, {s2}",
    "a picture of a {s1} {c1} {sh1} {rel} a {s2} {c2} {sh2}",
)
FULL_TEMPLATES_ONE_NO_BG: tuple[int, ...] = tuple(
    i for i, t in enumerate(TEMPLATES_ONE_NO_BG) if "{pos}" in t
)

MAX_CAPTION_WORDS = 64

_STOPWORDS = frozenset(
    {"a", "an", "the", "there", "is", "on", "at", "in", "to", "with", "of", "picture", "near"}
)
_WORD_TO_SIZE = {w: k for k, ws in SIZE_WORDS.items() for w in ws}
_WORD_TO_SHAPE = {w: k for k, ws in SHAPE_WORDS.items() for w in ws}
_WORD_TO_COLOR = {w: k for k, ws in COLOR_WORDS.items() for w in ws}
_WORD_TO_REL = {w: k for k, ph in RELATION_PHRASES.items() for w in ph if " " not in w}
_WORD_TO_REGION = {
    "top": "top",
    "bottom": "bottom",
    "center": "center",
    "centre": "center",
    "middle": "center",
}
_PUNCT = re.compile(r"[,.;:!]")
_VOWELS = frozenset("aeiou")


@dataclass(frozen=True)
class ObjectSpec:
    """Attributes of one object as stated by a caption (``None``: not stated).

    Attributes:
        shape: One of :data:`~snapfusion.data.scene.SHAPES`.
        color: Colour name or ``None``.
        size: ``"small"``, ``"big"`` or ``None``.
    """

    shape: str
    color: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """Everything a caption states about an image.

    Attributes:
        objects: One or two :class:`ObjectSpec`.
        background: Background colour name or ``None``.
        relation: For two objects: where ``objects[0]`` lies relative to
            ``objects[1]`` (one of :data:`~snapfusion.data.scene.RELATIONS`).
        region: For one object: its region or ``None``.
    """

    objects: tuple[ObjectSpec, ...]
    background: str | None = None
    relation: str | None = None
    region: str | None = None

    def canonical(self) -> CaptionSpec:
        """Same statement with the relation expressed as ``left`` or ``above``.

        Returns:
            An equivalent spec; ``"A right of B"`` becomes ``"B left of A"``.
        """
        if self.relation in ("right", "below"):
            return CaptionSpec(
                objects=(self.objects[1], self.objects[0]),
                background=self.background,
                relation=INVERSE_RELATION[self.relation],
                region=self.region,
            )
        return self


def spec_from_scene(scene: Scene) -> CaptionSpec:
    """Full caption spec of a scene (every attribute stated).

    Args:
        scene: The scene.

    Returns:
        The spec stating shapes, colours, sizes, relation or region, and background.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"expected a Scene, got {type(scene).__name__}")
    return CaptionSpec(
        objects=tuple(ObjectSpec(o.shape, o.color, o.size) for o in scene.objects),
        background=scene.background,
        relation=scene.relation,
        region=scene.region,
    )


def _pick(options: tuple[str, ...], rng: np.random.Generator | None) -> str:
    if rng is None or len(options) == 1:
        return options[0]
    return options[int(rng.integers(len(options)))]


def _fix_articles(text: str) -> str:
    # an omitted size leaves empty slots ("red circle, , on white"): close them up
    text = re.sub(r"\s*,(\s*,)+", ",", text).strip(" ,")
    words = text.split()
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][0] in _VOWELS:
            words[i] = "an"
    return " ".join(words)


def describe(
    target: Scene | CaptionSpec,
    rng: np.random.Generator | None = None,
    template: int | None = None,
    full: bool = False,
    omit_size: bool | Sequence[bool] = False,
    omit_background: bool = False,
) -> str:
    """Write a caption for a scene (or for a caption spec).

    Args:
        target: The scene, or a spec stating shape, colour and size of every
            object, the background, and the relation (two objects); the
            region of a single object may be ``None`` (then not mentioned).
        rng: Source of randomness for the template, synonyms and (two objects)
            the order in which the objects are named.  ``None`` gives the
            canonical caption (first usable template, first synonyms).
        template: Force a template index (into :data:`TEMPLATES_ONE` or
            :data:`TEMPLATES_TWO`, depending on the number of objects).
        full: Only use templates that state every attribute (one-object
            captions then always mention the region).
        omit_size: Leave the size out: for every object, or per object (in
            the order of the scene's objects).  A partial caption: any size
            fits it.
        omit_background: Leave the background out (templates of
            :data:`TEMPLATES_ONE_NO_BG` / :data:`TEMPLATES_TWO_NO_BG`, which
            ``template`` then indexes).

    Returns:
        A lowercase ASCII caption that :func:`parse_caption` maps back to
        the target's attributes.

    Raises:
        TypeError: If ``target`` is neither a Scene nor a CaptionSpec.
        ValueError: If the spec lacks an attribute the templates need, or the
            template index is invalid.
    """
    if isinstance(target, Scene):
        spec = spec_from_scene(target)
    elif isinstance(target, CaptionSpec):
        spec = target
    else:
        raise TypeError(f"expected a Scene or CaptionSpec, got {type(target).__name__}")
    objs = spec.objects
    if spec.background not in COLORS:
        raise ValueError(f"cannot describe a spec without a valid background: {spec.background!r}")
    for o in objs:
        if o.color not in COLORS or o.size not in SIZES or o.shape not in SHAPES:
            raise ValueError(f"cannot describe an incompletely stated object: {o}")
    bg = _pick(COLOR_WORDS[spec.background], rng)
    if isinstance(omit_size, (bool, np.bool_)):
        omit = [bool(omit_size)] * len(objs)
    else:
        omit = [bool(x) for x in omit_size]
    if len(omit) != len(objs):
        raise ValueError(f"omit_size has {len(omit)} entries for {len(objs)} objects")
    ones = TEMPLATES_ONE_NO_BG if omit_background else TEMPLATES_ONE
    full_ones = FULL_TEMPLATES_ONE_NO_BG if omit_background else FULL_TEMPLATES_ONE
    twos = TEMPLATES_TWO_NO_BG if omit_background else TEMPLATES_TWO

    def size_word(i: int, o: ObjectSpec) -> str:
        return "" if omit[i] else _pick(SIZE_WORDS[o.size], rng)  # type: ignore[index]

    if len(objs) == 1:
        if spec.relation is not None:
            raise ValueError("a single object cannot have a relation")
        if spec.region is None:
            if full:
                raise ValueError("full caption requested but the region is not stated")
            choices = tuple(i for i in range(len(ones)) if i not in full_ones)
        elif spec.region not in REGIONS:
            raise ValueError(f"unknown region {spec.region!r}")
        else:
            choices = full_ones if full else tuple(range(len(ones)))
        if template is None:
            template = choices[0] if rng is None else choices[int(rng.integers(len(choices)))]
        if template not in choices:
            raise ValueError(f"template index {template} not usable here (choices {choices})")
        o = objs[0]
        text = ones[template].format(
            s=size_word(0, o),
            c=_pick(COLOR_WORDS[o.color], rng),  # type: ignore[index]
            sh=_pick(SHAPE_WORDS[o.shape], rng),
            pos=_pick(REGION_PHRASES[spec.region], rng) if spec.region else "",
            bg=bg,
        )
    elif len(objs) == 2:
        if spec.relation not in RELATIONS:
            raise ValueError(f"two objects need a relation, got {spec.relation!r}")
        if spec.region is not None:
            raise ValueError("two objects cannot have a region")
        if template is None:
            template = 0 if rng is None else int(rng.integers(len(twos)))
        if not 0 <= template < len(twos):
            raise ValueError(f"template index {template} out of range")
        first, second, relation = objs[0], objs[1], spec.relation
        i1, i2 = 0, 1
        if rng is not None and rng.random() < 0.5:
            first, second, relation = second, first, INVERSE_RELATION[relation]
            i1, i2 = 1, 0
        text = twos[template].format(
            s1=size_word(i1, first),
            c1=_pick(COLOR_WORDS[first.color], rng),  # type: ignore[index]
            sh1=_pick(SHAPE_WORDS[first.shape], rng),
            rel=_pick(RELATION_PHRASES[relation], rng),
            s2=size_word(i2, second),
            c2=_pick(COLOR_WORDS[second.color], rng),  # type: ignore[index]
            sh2=_pick(SHAPE_WORDS[second.shape], rng),
            bg=bg,
        )
    else:
        raise ValueError(f"captions describe 1 or 2 objects, got {len(objs)}")
    return _fix_articles(text)


def check_probability(value: object, name: str) -> float:
    """``value`` as a float in [0, 1]; ValueError naming ``name`` otherwise (bools, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def draw_omissions(rng: np.random.Generator, p: float, n_objects: int) -> tuple[bool, list[bool]]:
    """What a partial caption leaves out: the background with probability ``p`` and,
    independently, each object's size (drawn in that order)."""
    no_bg = bool(rng.random() < p)
    return no_bg, [bool(rng.random() < p) for _ in range(n_objects)]


def partial_caption(caption: str, rng: np.random.Generator, p: float) -> str:
    """A partial paraphrase of a fully stated caption (what ``sample_batch(partial=p)`` writes).

    The background is left out with probability ``p`` and, independently, each object's size
    with probability ``p``; a region the caption states is kept. When nothing is left out, the
    caption is returned unchanged.

    Args:
        caption: A caption stating every object's size and the background.
        rng: Source of the omissions and of the paraphrase.
        p: Omission probability in [0, 1].

    Returns:
        A caption that :func:`parse_caption` maps to the same attributes, minus those left out.

    Raises:
        ValueError: If ``p`` is not a probability, or the caption does not parse or leaves out
            a size or the background already.
    """
    p = check_probability(p, "p")
    spec = parse_caption(caption)
    if spec.background is None or any(o.size is None or o.color is None for o in spec.objects):
        raise ValueError(f"not a fully stated caption: {caption!r}")
    no_bg, no_size = draw_omissions(rng, p, len(spec.objects))
    if not no_bg and not any(no_size):
        return caption
    return describe(spec, rng, full=spec.region is not None, omit_size=no_size, omit_background=no_bg)


def _check_generator(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")


def complete_spec(spec: CaptionSpec, rng: np.random.Generator) -> CaptionSpec:
    """Fill in what a caption spec leaves out, drawn as the world draws its scenes.

    The world draws the background uniformly from :data:`~snapfusion.data.scene.BACKGROUNDS`,
    each object's colour uniformly from the other colours, and each size uniformly; given the
    attributes a spec states, the attributes it leaves out are therefore drawn here as:

    * background: uniform over the backgrounds that no stated object colour rules out;
    * object colour: uniform over the colours other than the background (for two objects,
      other than a colour that would make them the same colour and shape);
    * size: ``small`` or ``big`` with probability 1/2 each.

    A single object's region is left as it is: the world's training captions leave it out
    too. Stated attributes are never changed.

    Args:
        spec: A caption spec (e.g. from :func:`parse_caption`).
        rng: Source of the drawn attributes.

    Returns:
        A spec stating every colour, size and the background.

    Raises:
        TypeError: If ``spec`` is not a CaptionSpec or ``rng`` not a numpy Generator.
    """
    if not isinstance(spec, CaptionSpec):
        raise TypeError(f"expected a CaptionSpec, got {type(spec).__name__}")
    _check_generator(rng)
    background = spec.background
    if background is None:
        stated = {o.color for o in spec.objects}
        options = [b for b in BACKGROUNDS if b not in stated] or list(BACKGROUNDS)
        background = options[int(rng.integers(len(options)))]
    objects = list(spec.objects)
    for i, o in enumerate(objects):
        color = o.color
        if color is None:
            others = [x for j, x in enumerate(objects) if j != i]
            options = [c for c in COLOR_NAMES if c != background
                       and not any(x.color == c and x.shape == o.shape for x in others)]
            color = options[int(rng.integers(len(options)))]
        size = o.size if o.size is not None else SIZES[int(rng.integers(len(SIZES)))]
        objects[i] = ObjectSpec(shape=o.shape, color=color, size=size)
    return replace(spec, objects=tuple(objects), background=background)


def complete_caption(caption: str, rng: np.random.Generator) -> str:
    """A caption of the world with what it leaves out filled in (:func:`complete_spec`).

    The world's training captions state every colour, every size and the background, and a
    model trained on them reads a caption that leaves some out outside its distribution
    (``"a red circle above a small blue square"`` has no background clause, so such a model
    takes the last colour word for the background). Drawing the missing attributes from the
    world's distribution given the stated ones, then drawing the completed caption, samples
    an image of the partial caption as the world would.

    Args:
        caption: Any text. A caption of the world's grammar that states every colour, size
            and the background, or text that is not of the grammar, is returned unchanged.
        rng: Source of the drawn attributes (not used when nothing is filled in).

    Returns:
        The caption, or the canonical caption (:func:`describe` without ``rng``) of the
        completed spec.

    Raises:
        TypeError: If ``caption`` is not a string or ``rng`` not a numpy Generator.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    _check_generator(rng)
    try:
        spec = parse_caption(caption)
    except ValueError:
        return caption
    if spec.background is not None and all(o.color is not None and o.size is not None
                                           for o in spec.objects):
        return caption
    return describe(complete_spec(spec, rng))


MUTABLE_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "background", "count")


def mutate_spec(spec: CaptionSpec, attribute: str, rng: np.random.Generator) -> CaptionSpec:
    """Make a caption spec false by changing one stated attribute.

    Used to verify that the checker rejects wrong captions.  For scenes of
    the world (whose two objects differ in colour or shape) the result is
    never true of the original image.

    Args:
        spec: A fully stated spec (e.g. from :func:`spec_from_scene`).
        attribute: ``"color"``, ``"shape"``, ``"size"`` (of one random
            object), ``"position"`` (another relation, or another region),
            ``"background"``, or ``"count"`` (drop the second object, or add
            one).
        rng: Random generator.

    Returns:
        The changed spec.
    """
    if attribute not in MUTABLE_ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {MUTABLE_ATTRIBUTES}")
    objs = list(spec.objects)
    i = int(rng.integers(len(objs)))

    def other(options: tuple[str, ...], current: str | None) -> str:
        rest = [x for x in options if x != current]
        return rest[int(rng.integers(len(rest)))]

    if attribute == "color":
        objs[i] = replace(objs[i], color=other(tuple(COLORS), objs[i].color))
    elif attribute == "shape":
        objs[i] = replace(objs[i], shape=other(SHAPES, objs[i].shape))
    elif attribute == "size":
        objs[i] = replace(objs[i], size=other(SIZES, objs[i].size))
    elif attribute == "background":
        return replace(spec, background=other(tuple(COLORS), spec.background))
    elif attribute == "position":
        if len(objs) == 2:
            return replace(spec, relation=other(RELATIONS, spec.relation))
        return replace(spec, region=other(tuple(REGIONS), spec.region))
    else:  # count
        if len(objs) == 2:
            return CaptionSpec(objects=(objs[0],), background=spec.background)
        extra = ObjectSpec(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=other(tuple(COLORS), spec.background),
            size=SIZES[int(rng.integers(len(SIZES)))],
        )
        return CaptionSpec(
            objects=(objs[0], extra),
            background=spec.background,
            relation=RELATIONS[int(rng.integers(len(RELATIONS)))],
            region=None,
        )
    return replace(spec, objects=tuple(objs))


def _tokenize(caption: str) -> list[tuple[str, str]]:
    """Turn a caption into (kind, value) tokens; kinds: color size shape rel region bg."""
    words = _PUNCT.sub(" ", caption.lower()).split()
    if not words:
        raise ValueError("caption is empty")
    if len(words) > MAX_CAPTION_WORDS:
        raise ValueError(f"caption too long ({len(words)} words, at most {MAX_CAPTION_WORDS})")
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in ("left", "right"):
            if nxt == "of":
                tokens.append(("rel", w))
                i += 2
                continue
            tokens.append(("region", w))
        elif w in _WORD_TO_REGION:
            if nxt == "of":
                raise ValueError(f"unsupported phrase {w!r} 'of' in caption {caption!r}")
            tokens.append(("region", _WORD_TO_REGION[w]))
        elif w in _WORD_TO_REL:
            tokens.append(("rel", _WORD_TO_REL[w]))
        elif w in _WORD_TO_SIZE:
            tokens.append(("size", _WORD_TO_SIZE[w]))
        elif w in _WORD_TO_SHAPE:
            tokens.append(("shape", _WORD_TO_SHAPE[w]))
        elif w in _WORD_TO_COLOR:
            tokens.append(("color", _WORD_TO_COLOR[w]))
        elif w == "background":
            tokens.append(("bg", w))
        elif w not in _STOPWORDS:
            raise ValueError(f"unknown word {w!r} in caption {caption!r}")
        i += 1
    return tokens


def parse_caption(caption: str) -> CaptionSpec:
    """Parse a caption of the shapes world back into its stated attributes.

    Args:
        caption: Caption text (case and the punctuation ``,.;:!`` are ignored).

    Returns:
        The :class:`CaptionSpec` stated by the caption.

    Raises:
        TypeError: If ``caption`` is not a string.
        ValueError: If the caption is empty, contains unknown words, or does
            not follow the grammar (e.g. two relations, an object without a
            shape word, conflicting attributes).
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    if not caption.isascii():
        raise ValueError("caption must be ASCII")
    tokens = _tokenize(caption)

    background: str | None = None
    markers = [i for i, t in enumerate(tokens) if t[0] == "bg"]
    if len(markers) > 1:
        raise ValueError(f"caption names the background twice: {caption!r}")
    if markers:
        m = markers[0]
        if m == 0 or tokens[m - 1][0] != "color":
            raise ValueError(f"'background' must follow a colour word: {caption!r}")
        background = tokens[m - 1][1]
        tokens = tokens[: m - 1] + tokens[m + 1 :]

    rels = [i for i, t in enumerate(tokens) if t[0] == "rel"]
    if len(rels) > 1:
        raise ValueError(f"caption has more than one relation: {caption!r}")
    relation = tokens[rels[0]][1] if rels else None
    groups = [tokens[: rels[0]], tokens[rels[0] + 1 :]] if rels else [tokens]

    objects: list[ObjectSpec] = []
    region: str | None = None
    for gi, group in enumerate(groups):
        shapes = [i for i, t in enumerate(group) if t[0] == "shape"]
        if len(shapes) != 1:
            raise ValueError(
                f"each object needs exactly one shape word, found {len(shapes)}: {caption!r}"
            )
        s_idx = shapes[0]
        before = [t[1] for t in group[:s_idx] if t[0] == "color"]
        after = [t[1] for t in group[s_idx + 1 :] if t[0] == "color"]
        if len(before) > 1:
            raise ValueError(f"an object has more than one colour: {caption!r}")
        if after:
            if markers or gi != len(groups) - 1 or len(after) > 1:
                raise ValueError(f"colour word after the shape word: {caption!r}")
            background = after[0]
        sizes = [t[1] for t in group if t[0] == "size"]
        if len(sizes) > 1:
            raise ValueError(f"an object has more than one size: {caption!r}")
        regions = [t[1] for t in group if t[0] == "region"]
        if regions:
            if len(regions) > 1 or region is not None or rels:
                raise ValueError(f"a region is only allowed once, for a single object: {caption!r}")
            region = regions[0]
        objects.append(
            ObjectSpec(
                shape=group[s_idx][1],
                color=before[0] if before else None,
                size=sizes[0] if sizes else None,
            )
        )
    assert relation is None or relation in RELATIONS
    assert region is None or region in REGIONS
    assert all(o.shape in SHAPES and (o.size is None or o.size in SIZES) for o in objects)
    return CaptionSpec(
        objects=tuple(objects), background=background, relation=relation, region=region
    )
