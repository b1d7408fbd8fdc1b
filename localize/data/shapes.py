"""The shapes world: seeded scenes of coloured shapes with referring expressions, boxes, masks and text answers.

A scene holds a few non-overlapping objects (shape, colour, size class, position) on a plain or noisy background.
A grammar produces referring expressions that pick exactly one object:

- attribute: "the red circle", "the triangle", "the blue object";
- superlative: "the leftmost square", "the biggest red object", "the topmost object";
- relation: "the circle above the blue square", "the square left of the red triangle".

Each expression's ``answer`` describes the referred object: "x{col} y{row} {size} {color} {shape}", where ``x``/``y``
name its centre on an 8 x 8 grid of the image and the size word its size class (positions named in words, as
LLaVA-1.5's data mix does; no pixel coordinates). The position comes first: the expression's last token (the token
the localization heads are read from) must predict it, which it can only do by finding the object. Splits are
disjoint ranges of scene seeds; difficulty 1 (3 objects, attribute expressions, plain background), 2 (3-4 objects,
+ superlatives), 3 (3-4 objects, + relations, noisy background). Objects are RefCOCO-sized (sides 0.34-0.46 of the
image): see SIZE_FRACTIONS. They are placed by rejection sampling, and at these sizes not every count fits: of the
first 500 test scenes at difficulty 3, 320 hold 3 objects, 128 hold 4, 33 hold 2 and 19 hold 1.

``shaded`` (a trial option, off by default; benchmarks/shapes_tiny/TRIALS.md): each object also gets a shade class,
rendered as a brightness texture on the 8-pixel patch grid whose cells are noisy but average exactly to the class's
level over the object, and the answer starts with the shade word: only an average over the object's whole extent
tells it.

``clutter`` (a trial option, 0 by default): up to that many little objects (sides 0.12-0.18 of the image, size word
"little"), sharing the scene's palette and shapes, fill the free space after the RefCOCO-sized ones. They are
objects like any other (expressions must single out their target among all of them, and training may refer to
them), but ``ShapesDataset`` and ``sample_scene(big_referents=True)`` only ask about RefCOCO-sized targets, the ones
the paper's map -> box step can recover. With ``clutter=8`` a scene mostly holds 9-11 objects (300 test scenes): too
many, the idea was, for one read of them all to be decoded. In trials 19-21 that slowed the learning of positions
rather than making the heads choose (benchmarks/shapes_tiny/TRIALS.md).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .sample import GroundingSample

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZE_WORDS: tuple[str, ...] = ("tiny", "small", "medium", "large")
# Side of each size class, as a fraction of the image side (128 px: 44, 49, 54, 59 px). The paper's maps -> box
# step binarizes at the map's mean, which only recovers objects of about a third of the image side or more (its
# oracle ceiling is ~0 below a side of 0.25 and ~1 above 0.35, at any grid): RefCOCO-sized objects.
SIZE_FRACTIONS: tuple[float, ...] = (0.34, 0.38, 0.42, 0.46)
POSITION_BINS = 8
# ``shaded`` worlds: each object's brightness texture averages to its class's level; one cell is noisy (SHADE_NOISE).
SHADE_WORDS: tuple[str, ...] = ("dark", "dim", "light", "bright")
SHADE_LEVELS: tuple[float, ...] = (0.5, 0.65, 0.8, 0.95)
SHADE_NOISE = 0.2
SHADE_CELLS = 16  # texture cells per image side (the 8-pixel patches of a 128-pixel image)
# ``clutter`` worlds: the little objects' side range (fraction of the image side) and size word (size class -1).
CLUTTER_FRACTIONS: tuple[float, float] = (0.12, 0.18)
CLUTTER_WORD = "little"
DEFAULT_IMAGE_SIZE = 128
SPLIT_BASES: dict[str, int] = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
SPLIT_CAPACITY = 1_000_000_000
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")
# Expression kinds, each with the lowest difficulty that asks it.
KIND_DIFFICULTY: dict[str, int] = {"attribute": 1, "superlative": 2, "relation": 3}
SUPERLATIVES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost", "biggest", "smallest")


def vocabulary(position_bins: int = POSITION_BINS, shaded: bool = False, clutter: bool = False) -> tuple[str, ...]:
    """Every word the world produces (expressions and answers with ``position_bins`` bins; ``shaded``: and the
    shade words; ``clutter``: and the little objects' size word), for a tokenizer."""
    return tuple(
        ["the", "object", "of", "above", "below", "left", "right", *SUPERLATIVES, *COLORS, *SHAPES, *SIZE_WORDS]
        + [f"x{i}" for i in range(position_bins)]
        + [f"y{i}" for i in range(position_bins)]
        + (list(SHADE_WORDS) if shaded else [])
        + ([CLUTTER_WORD] if clutter else [])
    )


VOCABULARY: tuple[str, ...] = vocabulary()


@dataclass
class ShapeObject:
    """One object of a scene: its attributes, its axis-aligned box (continuous pixels) and its mask."""

    shape: str
    color: str
    size_class: int  # index into SIZE_WORDS; -1 for a ``clutter`` world's little objects
    box: tuple[float, float, float, float]
    mask: np.ndarray = field(repr=False)
    shade: int | None = None  # shade class in a ``shaded`` world

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in pixels."""
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)

    @property
    def size_word(self) -> str:
        """The size class as a word."""
        return CLUTTER_WORD if self.size_class < 0 else SIZE_WORDS[self.size_class]


@dataclass
class Scene:
    """A rendered scene: the RGB image, its objects and the settings it was drawn with."""

    seed: int
    image: Image.Image
    objects: list[ShapeObject]
    difficulty: int
    image_size: int


@dataclass(frozen=True)
class Expression:
    """A referring expression, the index of the object it picks, and its kind."""

    text: str
    target: int
    kind: str


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([((x0 + x1 - 1) / 2.0, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


def _level_settings(difficulty: int) -> tuple[int, int, bool]:
    if difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    return {1: (3, 3, False), 2: (3, 4, False), 3: (3, 4, True)}[difficulty]


def _shade_texture(mask: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel brightness factors of an object: noisy per texture cell, shifted so that their mean over the
    object's pixels is exactly ``level``."""
    size = mask.shape[0]
    cell = max(1, size // SHADE_CELLS)
    cells = -(-size // cell)
    noise = rng.normal(0.0, SHADE_NOISE, size=(cells, cells))
    factor = np.kron(noise, np.ones((cell, cell)))[:size, :size]
    factor = factor - factor[mask].mean() + level
    return np.clip(factor, 0.05, 1.5)


def _place_objects(
    canvas: Image.Image,
    occupied: np.ndarray,
    rng: np.random.Generator,
    count: int,
    palette: np.ndarray,
    side_of: Callable[[np.random.Generator], tuple[int, int]],
) -> list[ShapeObject]:
    """Draw up to ``count`` objects on ``canvas`` into free space (``occupied`` is updated), each side and size class
    from ``side_of``; rejection sampling, 2000 tries."""
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    color_names = list(COLORS)
    gap = max(2, min(width, height) // 40)
    objects: list[ShapeObject] = []
    attempts = 0
    while len(objects) < count and attempts < 2000:
        attempts += 1
        side, size_class = side_of(rng)
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        if occupied[max(0, y0 - gap) : y0 + side + gap, max(0, x0 - gap) : x0 + side + gap].any():
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = color_names[int(palette[int(rng.integers(len(palette)))])]
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter))
        mask_image = Image.new("1", (width, height), 0)
        _draw_shape(ImageDraw.Draw(mask_image), shape, (x0, y0, x0 + side, y0 + side), 1)
        mask = np.array(mask_image, dtype=bool)
        _draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), fill)
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        occupied[y0 : y0 + side, x0 : x0 + side] = True
        objects.append(ShapeObject(shape=shape, color=color, size_class=size_class, box=box, mask=mask))
    return objects


def render_scene(
    seed: int,
    difficulty: int = 2,
    image_size: int = DEFAULT_IMAGE_SIZE,
    shaded: bool = False,
    clutter: int = 0,
    varied: bool = False,
) -> Scene:
    """Draw the scene of ``seed``: 3-4 non-overlapping objects with repeated attributes, as many as fit (1 scene in
    10 fits fewer); deterministic. ``shaded``: the same objects, each with a shade class and its texture;
    ``clutter``: the same objects, then up to that many little ones in the free space; ``varied``: a scene of the
    varied world (:func:`render_varied`; ``shaded`` and ``clutter`` do not apply)."""
    if varied:
        return render_varied(seed, difficulty, image_size)
    lo, hi, noisy = _level_settings(difficulty)
    rng = np.random.default_rng([int(seed), int(difficulty), int(image_size)])
    n_objects = int(rng.integers(lo, hi + 1))
    # Repeated attributes: draw from a small palette per scene so that single words rarely pick one object.
    palette = rng.choice(len(COLORS), size=min(len(COLORS), int(rng.integers(2, 4))), replace=False)
    background = np.full((image_size, image_size, 3), int(rng.integers(20, 70)), dtype=np.float32)
    if noisy:
        background += rng.normal(0.0, 18.0, size=background.shape).astype(np.float32)
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    occupied = np.zeros((image_size, image_size), dtype=bool)

    def refcoco_sized(rng: np.random.Generator) -> tuple[int, int]:
        size_class = int(rng.integers(len(SIZE_WORDS)))
        return int(round(SIZE_FRACTIONS[size_class] * image_size * rng.uniform(0.95, 1.05))), size_class

    objects = _place_objects(canvas, occupied, rng, n_objects, palette, refcoco_sized)
    if clutter > 0:  # a separate stream, so the RefCOCO-sized objects are those of the plain scene
        clutter_rng = np.random.default_rng([int(seed), int(difficulty), int(image_size), 53])
        lo_side, hi_side = (int(round(f * image_size)) for f in CLUTTER_FRACTIONS)

        def little(rng: np.random.Generator) -> tuple[int, int]:
            return int(rng.integers(lo_side, hi_side + 1)), -1

        objects += _place_objects(canvas, occupied, clutter_rng, int(clutter), palette, little)
    if shaded:  # a separate stream, so the objects are those of the unshaded scene
        shade_rng = np.random.default_rng([int(seed), int(difficulty), int(image_size), 31])
        pixels = np.asarray(canvas, dtype=np.float32)
        for obj in objects:
            obj.shade = int(shade_rng.integers(len(SHADE_WORDS)))
            factor = _shade_texture(obj.mask, SHADE_LEVELS[obj.shade], shade_rng)
            pixels[obj.mask] *= factor[obj.mask][:, None]
        canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return Scene(seed=int(seed), image=canvas, objects=objects, difficulty=difficulty, image_size=image_size)


# The varied world (``render_scene(varied=True)``): what a scene may look like beyond the plain world.
VARIED_SIDES: tuple[float, float] = (0.25, 0.5)  # object side / the canvas's short side
VARIED_ASPECTS: tuple[float, float] = (0.75, 1.33)  # canvas width / height
VARIED_JPEG: tuple[int, int] = (30, 90)  # JPEG quality range, applied to half the scenes


def _varied_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A flat or noisy, dark / light / grey / coloured background, with a stripe or blob texture or none."""
    tone = rng.choice(["dark", "light", "grey", "coloured"])
    base = {
        "dark": np.full(3, rng.uniform(10, 70)),
        "light": np.full(3, rng.uniform(180, 245)),
        "grey": np.full(3, rng.uniform(90, 160)),
        "coloured": rng.uniform(30, 220, size=3),
    }[tone]
    pixels = np.broadcast_to(base, (height, width, 3)).astype(np.float32).copy()
    texture = rng.choice(["none", "stripes", "blobs"])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if texture == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        pixels += (20 * np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period))[..., None]
    elif texture == "blobs":
        coarse = rng.normal(0, 25, size=(6, 6)).astype(np.float32)
        pixels += np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))[..., None]
    if rng.random() < 0.5:
        pixels += rng.normal(0.0, rng.uniform(5, 20), size=pixels.shape).astype(np.float32)
    return pixels


def render_varied(seed: int, difficulty: int = 3, image_size: int = DEFAULT_IMAGE_SIZE) -> Scene:
    """A scene of the varied world: 3-4 (difficulty 1: 3) objects, sides 0.25-0.5 of the short side (size class:
    the quarter of that range), on a canvas of aspect 0.75-1.33 (long side ``image_size``) over a varied
    background; objects textured or not, anti-aliased or hard-edged; half the scenes JPEG-compressed. Masks are the
    hard shapes. Deterministic in ``seed``; its own random stream, so plain scenes are unchanged."""
    lo, hi, _ = _level_settings(difficulty)
    rng = np.random.default_rng([int(seed), int(difficulty), int(image_size), 67])
    aspect = rng.uniform(*VARIED_ASPECTS)
    width, height = (
        (image_size, int(round(image_size / aspect))) if aspect >= 1 else (int(round(image_size * aspect)), image_size)
    )
    short = min(width, height)
    palette = rng.choice(len(COLORS), size=min(len(COLORS), int(rng.integers(2, 4))), replace=False)
    background = _varied_background(rng, width, height)
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))

    def varied_side(rng: np.random.Generator) -> tuple[int, int]:
        fraction = rng.uniform(*VARIED_SIDES)
        size_class = min(
            len(SIZE_WORDS) - 1,
            int((fraction - VARIED_SIDES[0]) / (VARIED_SIDES[1] - VARIED_SIDES[0]) * len(SIZE_WORDS)),
        )
        return int(round(fraction * short)), size_class

    occupied = np.zeros((height, width), dtype=bool)
    objects = _place_objects(canvas, occupied, rng, int(rng.integers(lo, hi + 1)), palette, varied_side)
    drawn = np.asarray(canvas, dtype=np.float32)
    fills = [drawn[obj.mask].mean(0) for obj in objects]  # each object's jittered colour, as _place_objects drew it
    pixels = background
    smooth = rng.random() < 0.5
    for obj, fill in zip(objects, fills):
        coverage = obj.mask.astype(np.float32)
        if smooth:  # anti-aliased edge: the shape drawn at 4x, area-averaged down
            big = Image.new("L", (width * 4, height * 4), 0)
            _draw_shape(ImageDraw.Draw(big), obj.shape, tuple(int(v * 4) for v in _drawn_box(obj)), 255)
            coverage = np.asarray(big.resize((width, height), Image.BOX), dtype=np.float32) / 255.0
        colour = np.broadcast_to(fill, pixels.shape).copy()
        if rng.random() < 0.5:  # textured object
            colour *= (1.0 + rng.normal(0, 0.12, size=(height, width, 1))).astype(np.float32)
        pixels = pixels * (1 - coverage[..., None]) + colour * coverage[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(*VARIED_JPEG)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return Scene(seed=int(seed), image=image, objects=objects, difficulty=difficulty, image_size=image_size)


def _drawn_box(obj: ShapeObject) -> tuple[int, int, int, int]:
    """The integer (x0, y0, x0 + side, y0 + side) an object was drawn with (``_draw_shape``'s box)."""
    x0, y0 = int(obj.box[0]), int(obj.box[1])
    side = max(int(obj.box[2] - obj.box[0]), int(obj.box[3] - obj.box[1]))
    return x0, y0, x0 + side, y0 + side


def answer_for(obj: ShapeObject, image_size: int | tuple[int, int], position_bins: int = POSITION_BINS) -> str:
    """The text answer about ``obj``: "x{col} y{row} {size} {color} {shape}" (``position_bins`` bins per axis;
    ``image_size``: the side, or (width, height) of a non-square canvas), after its shade word in a ``shaded``
    world."""
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    cx, cy = obj.center
    col = min(position_bins - 1, int(cx * position_bins / width))
    row = min(position_bins - 1, int(cy * position_bins / height))
    shade = "" if obj.shade is None else f"{SHADE_WORDS[obj.shade]} "
    return f"{shade}x{col} y{row} {obj.size_word} {obj.color} {obj.shape}"


def _descriptions(obj: ShapeObject) -> list[tuple[str, Callable]]:
    """Descriptions that ``obj`` satisfies, each with its predicate."""
    return [
        (f"{obj.color} {obj.shape}", lambda o, c=obj.color, s=obj.shape: o.color == c and o.shape == s),
        (obj.shape, lambda o, s=obj.shape: o.shape == s),
        (f"{obj.color} object", lambda o, c=obj.color: o.color == c),
    ]


def _relation_holds(relation: str, a: ShapeObject, b: ShapeObject, margin: float) -> bool:
    """Whether ``a`` is ``relation`` ``b``: the offset of centres points that way, within a 45-degree cone."""
    dx = a.center[0] - b.center[0]
    dy = a.center[1] - b.center[1]
    if relation == "above":
        return dy < -margin and abs(dx) <= abs(dy)
    if relation == "below":
        return dy > margin and abs(dx) <= abs(dy)
    if relation == "left of":
        return dx < -margin and abs(dy) <= abs(dx)
    return dx > margin and abs(dy) <= abs(dx)


def scene_expressions(scene: Scene) -> list[Expression]:
    """All expressions of the grammar (up to the scene's difficulty) that pick exactly one object."""
    objs = scene.objects
    margin = scene.image_size / 16.0  # one 8-px patch at 128 px
    out: list[Expression] = []
    seen: set[str] = set()

    def add(text: str, target: int, kind: str) -> None:
        if text not in seen:
            seen.add(text)
            out.append(Expression(text=text, target=target, kind=kind))

    for i, obj in enumerate(objs):
        for words, pred in _descriptions(obj):
            if sum(pred(o) for o in objs) == 1:
                add(f"the {words}", i, "attribute")
    if scene.difficulty >= KIND_DIFFICULTY["superlative"]:
        keys = {
            "leftmost": lambda o: o.center[0],
            "rightmost": lambda o: -o.center[0],
            "topmost": lambda o: o.center[1],
            "bottommost": lambda o: -o.center[1],
        }
        for i, obj in enumerate(objs):
            descs = [*_descriptions(obj), ("object", lambda o: True)]
            for words, pred in descs:
                group = [j for j, o in enumerate(objs) if pred(o)]
                if len(group) < 2:
                    continue
                for sup, key in keys.items():
                    values = sorted((key(objs[j]), j) for j in group)
                    if values[0][1] == i and values[1][0] - values[0][0] >= margin:
                        add(f"the {sup} {words}", i, "superlative")
                classes = sorted((objs[j].size_class, j) for j in group)
                if classes[-1][1] == i and classes[-1][0] > classes[-2][0]:
                    add(f"the biggest {words}", i, "superlative")
                if classes[0][1] == i and classes[0][0] < classes[1][0]:
                    add(f"the smallest {words}", i, "superlative")
    if scene.difficulty >= KIND_DIFFICULTY["relation"]:
        for k, anchor in enumerate(objs):
            anchor_words = f"{anchor.color} {anchor.shape}"
            if sum(o.color == anchor.color and o.shape == anchor.shape for o in objs) != 1:
                continue
            for i, obj in enumerate(objs):
                if i == k:
                    continue
                for words, pred in _descriptions(obj)[:2]:
                    group = [j for j, o in enumerate(objs) if j != k and pred(o)]
                    if len(group) < 2:
                        continue  # the relation must matter
                    for rel in RELATIONS:
                        hits = [j for j in group if _relation_holds(rel, objs[j], anchor, margin)]
                        if hits == [i]:
                            add(f"the {words} {rel} the {anchor_words}", i, "relation")
    return out


def choose_expression(expressions: list[Expression], rng: np.random.Generator) -> Expression:
    """Pick a kind uniformly among those present, then an expression of that kind uniformly."""
    kinds = sorted({e.kind for e in expressions})
    kind = kinds[int(rng.integers(len(kinds)))]
    pool = [e for e in expressions if e.kind == kind]
    return pool[int(rng.integers(len(pool)))]


def make_sample(scene: Scene, expression: Expression, split: str, index: int) -> GroundingSample:
    """The ``GroundingSample`` of one expression of a scene."""
    obj = scene.objects[expression.target]
    size = scene.image.size
    return GroundingSample(
        sample_id=f"shapes-{split}-d{scene.difficulty}-{scene.seed}",
        image=scene.image,
        expression=expression.text,
        box=obj.box,
        image_size=size,
        mask_array=obj.mask,
        answer=answer_for(obj, size),
        dataset="shapes",
        split=split,
        meta={
            "seed": scene.seed,
            "kind": expression.kind,
            "target": expression.target,
            "difficulty": scene.difficulty,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size_word, "box": list(o.box)} for o in scene.objects
            ],
        },
    )


def scene_seed(split: str, index: int, seed_offset: int = 0) -> int:
    """The scene seed of ``index`` in ``split``: splits are disjoint seed ranges."""
    if split not in SPLIT_BASES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_BASES)}")
    local = int(seed_offset) + int(index)
    if not 0 <= local < SPLIT_CAPACITY:
        raise IndexError(f"index {index} + seed_offset {seed_offset} is outside the split's seed range")
    return SPLIT_BASES[split] + local


def sample_scene(
    seed: int,
    difficulty: int,
    image_size: int,
    shaded: bool = False,
    clutter: int = 0,
    big_referents: bool = False,
    kinds: Sequence[str] | None = None,
    varied: bool = False,
) -> tuple[Scene, list[Expression]]:
    """The scene of ``seed`` with its valid expressions (``big_referents``: only those whose target is RefCOCO-sized,
    not a ``clutter`` object; ``kinds``: only expressions of those kinds); re-draws (deterministically) a scene with
    none."""
    if kinds is not None and not any(KIND_DIFFICULTY.get(kind, 99) <= difficulty for kind in kinds):
        raise ValueError(f"difficulty {difficulty} asks none of the kinds {list(kinds)} (see KIND_DIFFICULTY)")
    attempt = 0
    while True:
        scene = render_scene(
            seed if attempt == 0 else seed * 7919 + attempt, difficulty, image_size, shaded, clutter, varied
        )
        scene.seed = seed
        expressions = scene_expressions(scene)
        if big_referents:
            expressions = [e for e in expressions if scene.objects[e.target].size_class >= 0]
        if kinds is not None:
            expressions = [e for e in expressions if e.kind in kinds]
        if expressions:
            return scene, expressions
        attempt += 1


class ShapesDataset:
    """A split of the shapes world: ``size`` samples, one expression per scene, deterministic per index.

    The default difficulty, 3, is the full world (every expression kind, noisy backgrounds): what ``--data shapes``
    reads in ``discover``, ``bench`` and ``finetune``. In a ``clutter`` world only RefCOCO-sized objects are asked
    about."""

    name = "shapes"

    def __init__(
        self,
        split: str = "test",
        size: int = 1000,
        difficulty: int = 3,
        seed_offset: int = 0,
        image_size: int = DEFAULT_IMAGE_SIZE,
        shaded: bool = False,
        clutter: int = 0,
        varied: bool = False,
    ) -> None:
        scene_seed(split, 0, seed_offset)  # validates split and offset
        if size < 0 or seed_offset + size > SPLIT_CAPACITY:
            raise ValueError(f"size {size} does not fit the split's seed range")
        _level_settings(difficulty)
        self.split = split
        self.size = int(size)
        self.difficulty = int(difficulty)
        self.seed_offset = int(seed_offset)
        self.image_size = int(image_size)
        self.shaded = bool(shaded)
        if clutter < 0:
            raise ValueError(f"clutter must be >= 0, got {clutter}")
        self.clutter = int(clutter)
        self.varied = bool(varied)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> GroundingSample:
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(index)
        seed = scene_seed(self.split, index, self.seed_offset)
        scene, expressions = sample_scene(
            seed,
            self.difficulty,
            self.image_size,
            self.shaded,
            self.clutter,
            big_referents=self.clutter > 0,
            varied=self.varied,
        )
        rng = np.random.default_rng([seed, self.difficulty, 17])
        return make_sample(scene, choose_expression(expressions, rng), self.split, index)

    def __iter__(self) -> Iterator[GroundingSample]:
        for index in range(self.size):
            yield self[index]
