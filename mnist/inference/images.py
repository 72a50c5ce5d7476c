"""Untrusted input (path, file object, PIL image, array, tensor) -> luminance in [0, 1].
Every failure is an ImageError naming the input."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist.errors import ImageError

ImageSource = str | os.PathLike | IO[bytes] | Image.Image | np.ndarray | torch.Tensor

# Refused before decoding: a small file can declare a huge canvas (a decompression bomb).
# 50 MP covers phone cameras; decoded as RGBA it is 200 MB.
MAX_PIXELS = 50_000_000
# The long side images are shrunk to before the search for the digit: a digit that ends up
# 20 px tall needs no 12-MP photo.
WORK_SIZE = 512
_SIXTEEN_BIT_OR_FLOAT = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def _too_large(name: str, size: str) -> ImageError:
    return ImageError(
        f"{name}: too large ({size}), over the limit of {MAX_PIXELS:,} pixels (refused as a "
        "possible decompression bomb); shrink the image first"
    )


def _open_file(source: str | os.PathLike | IO[bytes]) -> Image.Image:
    """Decoded fully, so that truncation shows here, not later."""
    name = describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{name}: no such file")
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 MP on; the lower limit here is checked on the header's size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise _too_large(name, f"{width}x{height} = {width * height:,} pixels")
                # JPEG: decode at a reduced scale, still fine enough for a second look.
                image.draft(None, (2 * WORK_SIZE, 2 * WORK_SIZE))
                image.load()
                return ImageOps.exif_transpose(image)
    except ImageError:
        raise  # too large: a ValueError, but no failure to decode
    except Image.DecompressionBombError as e:  # PIL's own refusal, before it gives the size
        raise _too_large(name, f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{name}: not an image PIL can read (expected PNG, JPEG, BMP, GIF, TIFF or WebP)"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode, the file is truncated or corrupt ({e})") from e


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    """(H, W), (H, W, 1|3|4) or (1|3|4, H, W), after leading dimensions of size 1; uint8,
    uint16, or bool/float in [0, 1] (else stretched to it)."""
    if array.ndim > 3 and all(d == 1 for d in array.shape[:-3]):
        array = array.reshape(array.shape[-3:])
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(
            f"{name}: an array of shape {array.shape} is not an image; expected (H, W), "
            "(H, W, 3|4) or (3|4, H, W)"
        )
    if array.size == 0:
        raise ImageError(f"{name}: the image is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    unit = array.astype(np.float64)
    if array.dtype == np.uint16:
        unit /= 65535
    elif unit.min() < 0 or unit.max() > 1:
        span = np.ptp(unit)
        unit = (unit - unit.min()) / span if span > 0 else np.zeros_like(unit)
    return Image.fromarray(np.round(unit * 255).astype(np.uint8))


def as_image(source: ImageSource) -> Image.Image:
    name = describe(source)
    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source)
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _array_to_image(source, name)
    if isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
        return _open_file(source)
    raise ImageError(
        f"{name}: cannot read a {type(source).__name__}; pass a path, a file object, "
        "a PIL image, a numpy array or a tensor"
    )


def grey_levels(image: Image.Image) -> np.ndarray:
    """At most WORK_SIZE on the long side; 16-bit and float images stretched to their range."""
    if image.mode in _SIXTEEN_BIT_OR_FLOAT:
        image = image.convert("F")
    elif image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("LA")
    else:
        image = image.convert("L")
    if max(image.size) > WORK_SIZE:
        scale = WORK_SIZE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        span = np.ptp(values)
        return (values - values.min()) / span if span > 0 else np.zeros_like(values)
    pixels = np.asarray(image, dtype=np.float32) / 255
    if image.mode == "L":
        return pixels
    gray, alpha = pixels[..., 0], pixels[..., 1]
    # A digit drawn on a transparent canvas is ink wherever it is opaque, whatever its
    # colour: composite it over the background it contrasts with (white under dark ink).
    opaque = alpha > 0.5
    ink_is_dark = not opaque.any() or gray[opaque].mean() < 0.5
    return gray * alpha + float(ink_is_dark) * (1 - alpha)
