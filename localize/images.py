"""Image loading: paths, PIL images and arrays to RGB PIL images, EXIF orientation applied."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def load_image(image: ImageLike, exif_transpose: bool = True) -> Image.Image:
    """Return ``image`` as an RGB PIL image (RGBA/LA/P/CMYK/L/I/F converted; EXIF orientation applied unless
    ``exif_transpose=False``, as for dataset images whose annotations are in stored-pixel orientation)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if isinstance(path, str) and path.lower().startswith(("http://", "https://", "ftp://")):
            raise ImageError(f"URLs are not fetched: download {path} first and pass the file")
        try:
            with Image.open(path) as opened:
                opened.load()
                pil = ImageOps.exif_transpose(opened) if exif_transpose else opened.copy()
        except FileNotFoundError as err:
            raise ImageError(f"image not found: {path}") from err
        except Image.DecompressionBombError as err:
            raise ImageError(f"{path} has more pixels than PIL opens safely ({err}); downscale it first") from err
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"cannot read image {path}: {err}") from err
    elif isinstance(image, Image.Image):
        pil = ImageOps.exif_transpose(image) if exif_transpose else image
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image)
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}; pass a path, a PIL image or a numpy array")
    if pil.width < 1 or pil.height < 1:
        raise ImageError(f"empty image of size {pil.width}x{pil.height}")
    return _to_rgb(pil)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"array image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    return Image.fromarray(np.ascontiguousarray(array))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit values from a bool, integer or float array, scaled by what its values mean, never clipped:
    unsigned integers by their dtype's range (uint16: 0-65535), other integers and floats as 0-255 values, floats
    within [0, 1] as fractions; anything else is refused (e.g. a normalised image: undo the normalisation)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.unsignedinteger):
        top = np.iinfo(array.dtype).max
        return np.round(array.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ImageError(f"array image of dtype {array.dtype} is not a picture; pass uint8, uint16 or float values")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ImageError("float image contains NaN or inf")
    if array.size == 0:
        raise ImageError(f"empty image of shape {array.shape}")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise ImageError(
            f"{array.dtype} image values span [{low:g}, {high:g}]; expected [0, 1] or [0, 255] "
            "(undo any normalisation first)"
        )
    scale = 255.0 if np.issubdtype(array.dtype, np.floating) and high <= 1.0 else 1.0
    return np.round(array.astype(np.float64) * scale).astype(np.uint8)


def _to_rgb(pil: Image.Image) -> Image.Image:
    if pil.mode == "RGB":
        return pil
    if pil.mode in ("RGBA", "LA") or (pil.mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if pil.mode in ("I", "I;16", "F"):
        array = np.asarray(pil, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    return pil.convert("RGB")
