"""Images from paths, PIL and arrays become RGB, EXIF-rotated; unreadable input names the problem."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from localize.errors import ImageError
from localize.images import load_image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "1", "I;16", "F"])
def test_modes_become_rgb(mode):
    image = Image.new("RGB", (7, 5), (200, 30, 10)).convert(mode)
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (7, 5)


def test_transparent_pixels_composite_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 5, 10))  # white stripe on the left
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    out = load_image(path)
    assert out.size == (10, 30)
    assert out.getpixel((5, 1))[0] > 200  # the stripe is now on top


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((5, 6), np.uint8),
        np.ones((5, 6, 1), np.float32),
        np.zeros((5, 6, 4), np.uint8),
        np.full((5, 6, 3), 200, np.int64),
    ],
)
def test_arrays(array):
    out = load_image(array)
    assert out.mode == "RGB" and out.size == (6, 5)


def test_unreadable_file_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ImageError, match="unsupported image type"):
        load_image(42)


def test_dataset_images_keep_stored_orientation(tmp_path):
    from localize.data.sample import GroundingSample

    image = Image.new("RGB", (30, 10))
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    sample = GroundingSample("s", str(path), "a thing", (0, 0, 5, 5), (30, 10))
    assert sample.load_image().size == (30, 10)  # annotations are in stored-pixel orientation
    assert load_image(path, exif_transpose=False).size == (30, 10)


@pytest.mark.parametrize(
    ("array", "value"),
    [
        (np.full((2, 3), 65535, np.uint16), 255),  # uint16 by its range, not clipped to white
        (np.full((2, 3), 32896, np.uint16), 128),
        (np.full((2, 3), 0.5, np.float32), 128),  # fractions
        (np.full((2, 3), 7.0, np.float64), 7),  # 0-255 floats
        (np.full((2, 3), 200, np.int32), 200),
    ],
)
def test_arrays_scale_by_their_range(array, value):
    assert load_image(array).getpixel((0, 0)) == (value, value, value)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((2, 3), -0.5, np.float32), r"\[-0.5, -0.5\].*normalisation"),
        (np.full((2, 3), 300, np.int32), "300"),
        (np.full((2, 3), np.nan, np.float32), "NaN"),
        (np.full((2, 3), 1 + 1j), "not a picture"),
    ],
)
def test_arrays_out_of_range_are_refused_not_clipped(array, match):
    with pytest.raises(ImageError, match=match):
        load_image(array)


def test_urls_and_decompression_bombs_get_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="URLs are not fetched"):
        load_image("https://example.com/cat.jpg")
    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises past twice the limit
    with pytest.raises(ImageError, match="more pixels than PIL opens safely"):
        load_image(path)


@pytest.mark.parametrize("streamer", ["pyvips", "PIL only"])
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_large_files_are_reduced_on_load_by_an_integer_factor(tmp_path, monkeypatch, streamer, suffix):
    """Reduced on load (a JPEG by DCT scaling, a PNG / TIFF streamed by libvips, or PIL's reduce without it): the
    same factor and pixels either way, each reduced pixel the mean of its r x r block."""
    import sys

    from localize.images import original_size, reduced_by

    if streamer == "PIL only":
        monkeypatch.setitem(sys.modules, "pyvips", None)  # import pyvips -> ImportError
    ramp = np.broadcast_to(np.arange(260, dtype=np.uint16)[None, :, None] % 250, (130, 260, 3)).astype(np.uint8)
    path = tmp_path / f"wide{suffix}"
    Image.fromarray(np.ascontiguousarray(ramp)).save(path, quality=95)
    small = load_image(path, reduce_large=True, max_side=64)
    factor = reduced_by(small)
    assert original_size(small) == (260, 130) and factor >= 5 and max(small.size) <= 64
    expected = ramp[: (130 // factor) * factor, : (260 // factor) * factor, 0].astype(float)
    expected = expected.reshape(130 // factor, factor, 260 // factor, factor).mean(axis=(1, 3))
    got = np.asarray(small, dtype=float)[: expected.shape[0], : expected.shape[1], 0]
    assert np.abs(got - expected).max() <= (8 if suffix == ".jpg" else 1.01)
    assert load_image(path).size == (260, 130)  # without reduce_large: the full image
