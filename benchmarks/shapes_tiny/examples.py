"""Write the example images shipped in ``localize/assets/examples`` (drawn with plain PIL, as a user would).

    python -m localize.benchmarks.shapes_tiny.examples [--out localize/assets/examples]

Each is named for what it shows; ``localize explore`` offers them, and ``localize ground`` grounds on the first
when no image is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

# name -> (canvas size, background, [(kind, colour, box)])
EXAMPLES = {
    "red-circle-blue-square.png": ((256, 256), (30, 30, 36), [
        ("circle", (220, 40, 40), (20, 40, 120, 140)), ("square", (50, 90, 230), (140, 120, 236, 216)),
    ]),
    "three-shapes-light.png": ((320, 240), (235, 235, 228), [
        ("triangle", (40, 170, 60), (16, 120, 116, 220)), ("circle", (240, 200, 40), (120, 20, 210, 110)),
        ("square", (150, 60, 190), (214, 110, 304, 200)),
    ]),
    "four-shapes-grey.png": ((256, 256), (128, 128, 128), [
        ("square", (220, 40, 40), (12, 12, 100, 100)), ("circle", (50, 90, 230), (150, 16, 240, 106)),
        ("triangle", (240, 200, 40), (16, 148, 110, 242)), ("circle", (40, 170, 60), (146, 140, 244, 238)),
    ]),
}  # fmt: skip


def draw(size: tuple[int, int], background: tuple[int, int, int], items: list) -> Image.Image:
    """One example: flat background, hard-edged solid shapes in their boxes."""
    image = Image.new("RGB", size, background)
    pen = ImageDraw.Draw(image)
    for kind, colour, (x0, y0, x1, y1) in items:
        if kind == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == "square":
            pen.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return image


def main(argv: list[str] | None = None) -> int:
    """Write every example under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "localize" / "assets" / "examples"))
    out = Path(parser.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (size, background, items) in EXAMPLES.items():
        draw(size, background, items).save(out / name, optimize=True)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
