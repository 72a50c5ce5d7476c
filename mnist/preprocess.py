"""Any image of a digit -> the 28x28 input the model was trained on, made the way MNIST was
made: the digit's ink, white on black with the background at exactly zero, scaled so its
longest side is 20 px with anti-aliasing, placed in 28x28 with its centre of mass at the
centre. A model that scores 99% on MNIST has only seen such images, so whatever a photo
adds (paper colour, uneven light, noise, polarity, position, size) is taken away here.

numpy and PIL only: the few image operations needed (box blur, connected components, a
least-squares background) are short in numpy and not worth a scipy/OpenCV dependency."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist.data import normalize, to_unit_float

ImageSource = str | os.PathLike | IO[bytes] | Image.Image | np.ndarray | torch.Tensor

IMAGE_SIZE = 28
DIGIT_BOX = 20
# Where MNIST put the centre of mass (row, column in pixel indices): the mean over the
# training set is (14.00, 14.01).
CENTRE = 14.0
# Larger images are refused before decoding: a small file can declare a huge canvas
# (a decompression bomb). 50 MP covers phone cameras; decoded as RGBA it is 200 MB.
MAX_PIXELS = 50_000_000
# Images are shrunk to this long side before the search for the digit: a digit that
# ends up 20 px tall needs no 12-MP photo, and every step below is linear in pixels.
WORK_SIZE = 512
# A digit found smaller than this (in pixels of the shrunk image) is searched again in a
# full-resolution crop around it: a small digit in a large photo keeps its detail.
DETAIL_SIZE = 96
# Ink must stand this many noise deviations above the background, so that paper texture
# and sensor noise never become strokes, even when the digit is a tiny part of the image.
NOISE_SIGMAS = 4.0
# Pieces of a digit (a broken stroke, the bar of a 5) are kept when they carry this
# fraction of the main stroke's ink and lie near it; smaller specks are noise.
PIECE_FRACTION = 0.05
# The ink level that maps to white: this percentile of the stroke pixels, so the core
# of a stroke saturates as in MNIST, where ~45% of the stroke pixels are >= 0.9.
INK_PERCENTILE = 75
LUMA = np.array([0.299, 0.587, 0.114])
_SIXTEEN_BIT_OR_FLOAT = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(ValueError):
    """An input that is not a usable image of a digit; the message names it and why."""


def describe(source: ImageSource) -> str:
    """How an input is named in messages: its path, or its type."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def _open_file(source: str | os.PathLike | IO[bytes]) -> Image.Image:
    """Decode a file fully (truncation shows here, not later) with its EXIF orientation
    applied, refusing decompression bombs from the header alone."""
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
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: {width}x{height} pixels is over the limit of {MAX_PIXELS:,} "
                        "(refused as a possible decompression bomb); shrink the image first"
                    )
                # JPEG: decode at a reduced scale, still fine enough for a second look.
                image.draft(None, (2 * WORK_SIZE, 2 * WORK_SIZE))
                image.load()
                return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{name}: not an image PIL can read (expected PNG, JPEG, BMP, GIF, TIFF or WebP)"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode, the file is truncated or corrupt ({e})") from e


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    """(H, W), (H, W, 1|3|4) or channels-first (1|3|4, H, W) arrays, with any leading batch
    dimensions of size 1; uint8, uint16, or bool/float in [0, 1] (else stretched to it)."""
    array = np.asarray(array)
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


def _as_image(source: ImageSource) -> Image.Image:
    name = describe(source)
    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source)
    if isinstance(source, torch.Tensor):
        return _array_to_image(source.detach().cpu().numpy(), name)
    if isinstance(source, np.ndarray):
        return _array_to_image(source, name)
    if isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
        return _open_file(source)
    raise ImageError(
        f"{name}: cannot read a {type(source).__name__}; pass a path, a file object, "
        "a PIL image, a numpy array or a tensor"
    )


def _gray_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance in [0, 1] at most WORK_SIZE on the long side, and opacity if any pixel is
    transparent. 16-bit and float images are stretched to their own range."""
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
        return (values - values.min()) / span if span > 0 else np.zeros_like(values), None
    pixels = np.asarray(image, dtype=np.float32) / 255
    if image.mode == "L":
        return pixels, None
    alpha = pixels[..., 1]
    return pixels[..., 0], alpha if alpha.min() < 1 else None


def _flatten_alpha(gray: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """A digit drawn on a transparent canvas is ink wherever it is opaque, whatever its
    colour: composite it over the background it contrasts with (white under dark ink)."""
    if alpha is None:
        return gray
    opaque = alpha > 0.5
    ink_is_dark = not opaque.any() or gray[opaque].mean() < 0.5
    background = 1.0 if ink_is_dark else 0.0
    return gray * alpha + background * (1 - alpha)


def _box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, by summed-area table: cost independent of radius."""
    if radius < 1:
        return values
    k = 2 * radius + 1
    padded = np.pad(values, radius, mode="edge")
    sums = np.pad(padded.cumsum(0), ((1, 0), (0, 0)))
    rows = sums[k:] - sums[:-k]
    sums = np.pad(rows.cumsum(1), ((0, 0), (1, 0)))
    return (sums[:, k:] - sums[:, :-k]) / (k * k)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, separably."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    rows = np.zeros((h + 2 * radius, w), bool)
    for shift in range(2 * radius + 1):
        rows |= padded[:, shift : shift + w]
    grown = np.zeros((h, w), bool)
    for shift in range(2 * radius + 1):
        grown |= rows[shift : shift + h]
    return grown


def _sample(values: np.ndarray, size: int = 20_000) -> np.ndarray:
    """An evenly strided subset: medians of a few thousand pixels are as good as of all."""
    flat = values.ravel()
    return flat[:: max(1, len(flat) // size)]


def _ink_is_dark(gray: np.ndarray) -> bool:
    """Dark ink on light paper, or light ink on a dark background? The border is mostly
    background; the ink is the extreme furthest from it. Extremes are taken after a blur,
    where strokes survive and pixel noise does not."""
    h, w = gray.shape
    ring = max(1, round(0.03 * min(h, w)))
    border = np.concatenate(
        [gray[:ring].ravel(), gray[-ring:].ravel(), gray[:, :ring].ravel(), gray[:, -ring:].ravel()]
    )
    background = np.median(_sample(border))
    smooth = _box_mean(gray, max(1, round(max(h, w) / 300)))
    return background - smooth.min() > smooth.max() - background


def _fit_background(image: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface through the background pixels: uneven lighting and
    vignetting are smooth, so six coefficients model them, and unlike a blur or a
    morphological opening the fit does not depend on how thick the strokes are."""
    h, w = image.shape
    step = max(1, int(np.sqrt(h * w / 5_000)))
    y, x = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
    keep = ~exclude[::step, ::step]
    if keep.sum() < 6:
        return np.full_like(image, np.median(_sample(image)))
    ys, xs = (grid[keep] for grid in np.meshgrid(y[::step], x[::step], indexing="ij"))
    basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], 1)
    c, *_ = np.linalg.lstsq(basis, image[::step, ::step][keep], rcond=None)
    y, x = y[:, None], x[None, :]
    surface = c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y
    return surface.astype(image.dtype)


def _otsu(values: np.ndarray) -> float:
    """The threshold that maximises the between-class variance of a 256-bin histogram."""
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean_sum = np.cumsum(counts * centres)
    below, above = weight[:-1], weight[-1] - weight[:-1]
    valid = (below > 0) & (above > 0)
    if not valid.any():
        return float(edges[-1])
    mean_below = mean_sum[:-1] / np.maximum(below, 1)
    mean_above = (mean_sum[-1] - mean_sum[:-1]) / np.maximum(above, 1)
    between = np.where(valid, below * above * (mean_below - mean_above) ** 2, -1.0)
    return float(edges[1:][np.argmax(between)])


def _ink_threshold(smooth: np.ndarray, background: np.ndarray) -> float:
    """Otsu's threshold, raised to the noise floor of the background where Otsu would cut
    into the noise (it does when the ink is a tiny fraction of the image)."""
    values = _sample(smooth[background] if background.any() else smooth)
    centre = np.median(values)
    noise = 1.4826 * np.median(np.abs(values - centre))  # a robust standard deviation
    return max(_otsu(_sample(smooth, 50_000)), centre + NOISE_SIGMAS * noise)


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of `mask`: an id for each pixel of `np.nonzero(mask)`, in
    that order. Works on the list of ink pixels only (min-label propagation over their
    neighbour pairs, with pointer jumping), so its cost does not grow with the image."""
    rows, cols = np.nonzero(mask)
    stride = mask.shape[1] + 2  # a padded row: a step off either edge hits no pixel
    index = rows * stride + cols  # ascending, as np.nonzero returns row-major order
    starts, ends = [], []
    for offset in (1, stride - 1, stride, stride + 1):  # right, and the three below
        position = np.minimum(np.searchsorted(index, index + offset), len(index) - 1)
        linked = index[position] == index + offset
        starts.append(np.nonzero(linked)[0])
        ends.append(position[linked])
    start, end = np.concatenate(starts), np.concatenate(ends)
    labels = np.arange(len(index))
    while True:
        lowest = np.minimum(labels[start], labels[end])
        merged = labels.copy()
        np.minimum.at(merged, start, lowest)
        np.minimum.at(merged, end, lowest)
        merged = merged[merged]
        if np.array_equal(merged, labels):
            return np.unique(labels, return_inverse=True)[1]
        labels = merged


def _digit_mask(strong: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The strokes of the digit among all ink blobs: the heaviest blob that does not touch
    the image border (paper edges and shadows do), plus nearby pieces of real weight."""
    component = _components(strong)
    rows, cols = np.nonzero(strong)
    n = component.max() + 1
    mass = np.bincount(component, weights=weight[rows, cols], minlength=n)
    top, left = np.full(n, rows.max()), np.full(n, cols.max())
    bottom, right = np.zeros(n, int), np.zeros(n, int)
    np.minimum.at(top, component, rows)
    np.minimum.at(left, component, cols)
    np.maximum.at(bottom, component, rows)
    np.maximum.at(right, component, cols)
    h, w = strong.shape
    inner = (top > 0) & (left > 0) & (bottom < h - 1) & (right < w - 1)
    candidates = inner if inner.any() else np.ones(n, bool)
    main = np.argmax(np.where(candidates, mass, -1.0))
    margin = 0.5 * max(bottom[main] - top[main], right[main] - left[main]) + 1
    near = (
        (top >= top[main] - margin)
        & (bottom <= bottom[main] + margin)
        & (left >= left[main] - margin)
        & (right <= right[main] + margin)
    )
    keep = (mass >= PIECE_FRACTION * mass[main]) & near & (candidates | (np.arange(n) == main))
    mask = np.zeros_like(strong)
    mask[rows, cols] = keep[component]
    return mask


def _ink(gray: np.ndarray) -> np.ndarray:
    """The digit's ink in [0, 1] (white on black, background exactly 0), same shape."""
    if np.ptp(gray) < 1 / 255:
        raise ImageError("no digit found, the image is a single flat colour")
    bright = 1.0 - gray if _ink_is_dark(gray) else gray
    radius = max(1, round(max(gray.shape) / 300))
    smooth = _box_mean(bright, radius)
    exclude = _dilate(smooth > _otsu(smooth), radius)
    for _ in range(2):  # fit the background without the ink, then refit without what it revealed
        residual = bright - _fit_background(bright, exclude)
        smooth = _box_mean(residual, radius)
        strong = smooth > _ink_threshold(smooth, ~exclude)
        exclude = _dilate(strong, radius)
    if not strong.any():
        raise ImageError("no digit found, nothing stands out from the background")
    digit = _digit_mask(strong, np.clip(smooth, 0, None))
    rows, cols = np.nonzero(digit)
    size = max(np.ptp(rows), np.ptp(cols)) + 1
    # Keep the soft edge of the strokes (a fraction of an MNIST pixel wide) that lies
    # below the threshold: it is the anti-aliasing MNIST has too.
    edge = _dilate(digit, max(1, round(size / (2 * DIGIT_BOX))))
    level = np.percentile(residual[digit], INK_PERCENTILE)
    ink = np.where(edge, np.clip(residual / max(level, 1e-6), 0, 1), 0.0)
    if not ink.any():
        raise ImageError("no digit found, nothing stands out from the background")
    return ink


def _centred(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the long side to 20 px (anti-aliased, aspect kept), and
    place in 28x28 with the centre of mass at the centre, as MNIST did."""
    rows, cols = np.nonzero(ink)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.float32)
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
    digit = np.clip(digit, 0, 1)
    mass = digit.sum()
    if mass <= 0:
        raise ImageError("no digit found after scaling")
    cy = (digit.sum(1) * np.arange(digit.shape[0])).sum() / mass
    cx = (digit.sum(0) * np.arange(digit.shape[1])).sum() / mass
    top = int(np.clip(round(CENTRE - cy), 0, IMAGE_SIZE - digit.shape[0]))
    left = int(np.clip(round(CENTRE - cx), 0, IMAGE_SIZE - digit.shape[1]))
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas


def _digit_ink(image: Image.Image) -> np.ndarray:
    """The digit's ink, found in the image shrunk to WORK_SIZE; found again in a
    full-resolution crop around it (three times its size) when it came out small."""
    ink = _ink(_flatten_alpha(*_gray_and_alpha(image)))
    shrink = max(image.size) / max(ink.shape)
    rows, cols = np.nonzero(ink)
    size = max(np.ptp(rows), np.ptp(cols)) + 1
    if shrink <= 1 or size >= DETAIL_SIZE:
        return ink
    box = np.array([cols.min() - size, rows.min() - size, cols.max() + size, rows.max() + size])
    left, top, right, bottom = np.clip(np.round(box * shrink), 0, [*image.size, *image.size])
    crop = image.crop((int(left), int(top), int(right) + 1, int(bottom) + 1))
    return _ink(_flatten_alpha(*_gray_and_alpha(crop)))


def to_mnist(source: ImageSource) -> np.ndarray:
    """The digit in `source` as MNIST stores digits: uint8 (28, 28), white on black.
    Raises ImageError, naming the input, when it cannot be read or holds no digit."""
    image = _as_image(source)
    try:
        canvas = _centred(_digit_ink(image))
    except ImageError as e:
        raise ImageError(f"{describe(source)}: {e}") from e
    return np.round(canvas * 255).astype(np.uint8)


def model_input(digits: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) digits -> the normalised float (B, 1, 28, 28) batch, exactly as
    the training loop builds its batches."""
    return normalize(to_unit_float(torch.as_tensor(digits)))


def preprocess(source: ImageSource) -> torch.Tensor:
    """Any image of one digit -> the float (1, 28, 28) tensor the model expects."""
    return model_input(to_mnist(source)[None])[0]
