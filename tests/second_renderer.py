"""A second, independent renderer of shapes scenes (plain PIL; none of ``benchmarks/shapes.py``'s code or colours).

Scenes: 2-4 non-overlapping circles, squares and triangles in PIL's named colours on a plain background (black,
white or a grey), sides 0.3-0.45 of the canvas; expressions are the attribute ones ("the red circle", "the
square", "the blue object") that pick exactly one object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageDraw

COLOURS = ("red", "green", "blue", "yellow", "purple")
KINDS = ("circle", "square", "triangle")
BACKGROUNDS = ((0, 0, 0), (255, 255, 255), (128, 128, 128), (60, 60, 60), (200, 200, 200))


@dataclass
class Item:
    """One drawn object: kind, colour name, box (x0, y0, x1, y1) and mask."""

    kind: str
    colour: str
    box: tuple[float, float, float, float]
    mask: np.ndarray


def draw_scene(seed: int, size: int = 128) -> tuple[Image.Image, list[Item]]:
    """Scene ``seed``: the image and its 2-4 objects (rejection-sampled, no overlaps)."""
    rng = np.random.default_rng([seed, 4242])
    image = Image.new("RGB", (size, size), BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    draw = ImageDraw.Draw(image)
    taken = np.zeros((size, size), dtype=bool)
    items: list[Item] = []
    wanted = int(rng.integers(2, 5))
    for _ in range(500):
        if len(items) == wanted:
            break
        side = int(rng.uniform(0.3, 0.45) * size)
        x, y = (int(v) for v in rng.integers(0, size - side, size=2))
        if taken[max(0, y - 3) : y + side + 3, max(0, x - 3) : x + side + 3].any():
            continue
        kind, colour = KINDS[int(rng.integers(3))], COLOURS[int(rng.integers(5))]
        layer = Image.new("L", (size, size), 0)
        shape = ImageDraw.Draw(layer)
        if kind == "circle":
            shape.ellipse((x, y, x + side, y + side), fill=255)
        elif kind == "square":
            shape.rectangle((x, y, x + side, y + side), fill=255)
        else:
            shape.polygon([(x + side / 2, y), (x + side, y + side), (x, y + side)], fill=255)
        draw.bitmap((0, 0), layer, fill=ImageColor.getrgb(colour))
        mask = np.asarray(layer) > 0
        ys, xs = np.nonzero(mask)
        taken[y : y + side + 1, x : x + side + 1] = True
        items.append(
            Item(kind, colour, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), mask)
        )
    return image, items


def expressions(items: list[Item]) -> list[tuple[str, int]]:
    """Attribute expressions that pick exactly one object, with its index."""
    out = []
    for i, item in enumerate(items):
        for text, same in (
            (f"the {item.colour} {item.kind}", lambda o, a=item: (o.colour, o.kind) == (a.colour, a.kind)),
            (f"the {item.kind}", lambda o, a=item: o.kind == a.kind),
            (f"the {item.colour} object", lambda o, a=item: o.colour == a.colour),
        ):
            if sum(same(o) for o in items) == 1:
                out.append((text, i))
    return out


def held_out_set(scenes: int = 24, per_scene: int = 2) -> list[tuple[Image.Image, str, tuple]]:
    """``(image, expression, box)`` for up to ``per_scene`` expressions of each of ``scenes`` scenes with 2+ objects."""
    rows, seed = [], 0
    while len({id(r[0]) for r in rows}) < scenes:
        image, items = draw_scene(seed)
        seed += 1
        if len(items) < 2:
            continue
        found = expressions(items)
        rng = np.random.default_rng([seed, 7])
        for k in rng.permutation(len(found))[:per_scene]:
            text, target = found[int(k)]
            rows.append((image, text, items[target].box))
    return rows
