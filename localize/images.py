"""Image loading: paths, PIL images and arrays to RGB PIL images, EXIF orientation applied."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray

# Grounding reduces images with a longer side by an integer factor on load: the model sees a few hundred pixels
# (SAM resizes to 1024 itself; families whose processor takes more declare it: ``Adapter.max_input_side``), and a
# 12000 x 12000 photo would otherwise cost gigabytes in the decoder, the processor and the full-size maps.
MAX_SIDE = 1024
_REDUCED_BY, _ORIGINAL_SIZE = "localize_reduced_by", "localize_original_size"
# Example images shipped in the package (benchmarks/shapes_tiny/examples.py draws them): `localize ground --example`
# and the explorer offer them.
EXAMPLES = ("red-circle-blue-square.png", "three-shapes-light.png", "four-shapes-grey.png")


def example_image(name: str = EXAMPLES[0]) -> str:
    """The path of shipped example image ``name`` (one of ``EXAMPLES``)."""
    if name not in EXAMPLES:
        raise ImageError(f"no example image {name!r}; examples: {', '.join(EXAMPLES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "examples", name)


def load_image(
    image: ImageLike, exif_transpose: bool = True, reduce_large: bool = False, max_side: int | None = None
) -> Image.Image:
    """Return ``image`` as an RGB PIL image (RGBA/LA/P/CMYK/L/I/F converted; EXIF orientation applied unless
    ``exif_transpose=False``, as for dataset images whose annotations are in stored-pixel orientation).

    ``reduce_large``: an image whose longer side exceeds ``max_side`` (default ``MAX_SIDE``) comes back reduced by
    an integer factor that fits, box-averaged (reduced pixel i covers original pixels [i r, (i + 1) r)), without a
    full-size buffer where the format allows: a JPEG decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``), a PNG or
    TIFF shrunk while libvips streams it (pyvips); then ``Image.reduce``. :func:`reduced_by` and
    :func:`original_size` tell the factor and the size it had.
    """
    limit = max_side or MAX_SIDE
    pil = _open(image, exif_transpose, limit if reduce_large else None)
    if pil.width < 1 or pil.height < 1:
        raise ImageError(f"empty image of size {pil.width}x{pil.height}")
    drafted, size = reduced_by(pil), original_size(pil)
    pil = _to_rgb(pil)
    rest = _factor(size, limit * drafted) if reduce_large else 1
    if rest > 1:
        pil = pil.reduce(rest)
    if drafted * rest > 1:
        pil.info.update({_REDUCED_BY: drafted * rest, _ORIGINAL_SIZE: size})
    return pil


def _factor(size: tuple[int, int], max_side: int) -> int:
    """The smallest integer factor that brings the longer side of ``size`` to ``max_side`` or below."""
    return -(-max(size) // max_side)


def reduced_by(image: Image.Image) -> int:
    """The factor :func:`load_image` reduced ``image`` by (1: not reduced)."""
    return int(image.info.get(_REDUCED_BY, 1))


def original_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of ``image`` before :func:`load_image` reduced it."""
    return tuple(image.info.get(_ORIGINAL_SIZE, image.size))


def _open(image: ImageLike, exif_transpose: bool, max_side: int | None) -> Image.Image:
    """A path, PIL image or array as a PIL image (any mode); the one-line errors of :func:`load_image`. With
    ``max_side`` a JPEG larger than that is decoded at a reduced scale (its factor and full size in ``info``)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if isinstance(path, str) and path.lower().startswith(("http://", "https://", "ftp://")):
            raise ImageError(f"URLs are not fetched: download {path} first and pass the file")
        try:
            with warnings.catch_warnings():
                if max_side:  # past PIL's warning size but under its error size: reduced right after
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as pil:  # leaving closes the file only; the pixels stay
                    full, scale = pil.size, _draft(pil, max_side) if max_side else 1
                    streamed = _streamed(path, pil, max_side) if max_side and scale == 1 else None
                    if streamed is not None:
                        return streamed
                    pil.load()
                    if exif_transpose:  # in place: a copy would double the peak of a large photo
                        ImageOps.exif_transpose(pil, in_place=True)
                if scale > 1:
                    turned = (pil.width > pil.height) != (full[0] > full[1])
                    pil.info.update({_REDUCED_BY: scale, _ORIGINAL_SIZE: full[::-1] if turned else full})
        except FileNotFoundError as err:
            raise ImageError(f"image not found: {path}") from err
        except Image.DecompressionBombError as err:
            raise ImageError(f"{path} has more pixels than PIL opens safely ({err}); downscale it first") from err
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"cannot read image {path}: {err}") from err
        return pil
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image) if exif_transpose else image
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    raise ImageError(f"unsupported image type {type(image).__name__}; pass a path, a PIL image or a numpy array")


def _streamed(path: str, pil: Image.Image, max_side: int) -> Image.Image | None:
    """A large non-JPEG file (PNG, TIFF, WebP) shrunk by an integer factor while libvips streams it (pyvips): PIL
    would decode every pixel first (576 MB for 12000 x 12000). None when pyvips is absent, the file is small or
    has an EXIF orientation or more than 8 bits (PIL's path applies the orientation and stretches 16-bit values)."""
    factor = _factor(pil.size, max_side)
    if factor < 2 or pil.mode not in ("RGB", "RGBA", "L", "LA", "P") or _may_be_rotated(pil):
        return None
    try:
        import pyvips
    except (ImportError, OSError):  # not installed, or libvips missing
        return None
    try:
        array = pyvips.Image.new_from_file(path, access="sequential").shrink(factor, factor).numpy()
    except pyvips.Error as err:
        raise ImageError(f"cannot read image {path}: {' '.join(str(err).split())[:200]}") from None
    small = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    small.info.update({_REDUCED_BY: factor, _ORIGINAL_SIZE: pil.size})
    return small


def _may_be_rotated(pil: Image.Image) -> bool:
    """Whether an opened, not yet loaded file may carry an EXIF orientation, judged from its header alone
    (``getexif()`` would decode a PNG to look for an eXIf chunk after the pixels)."""
    if pil.format == "TIFF":
        return getattr(pil, "tag_v2", {}).get(0x0112, 1) != 1
    return "exif" in pil.info


def _draft(pil: Image.Image, max_side: int) -> int:
    """Ask a large JPEG to decode at 1/2, 1/4 or 1/8 scale (DCT scaling, no full-size buffer); the scale taken."""
    factor = _factor(pil.size, max_side)
    if pil.format != "JPEG" or factor < 2:
        return 1
    pil.draft("RGB", (max(pil.width // factor, 1), max(pil.height // factor, 1)))
    return int(getattr(pil, "decoderconfig", (1,))[0] or 1)


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
