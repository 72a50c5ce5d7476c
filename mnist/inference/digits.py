"""Any image of a digit -> the 28x28 input the model was trained on, made the way MNIST was
made (white ink on an exactly-zero background, long side 20 px, centre of mass centred): a
model that scores 99% on MNIST has only seen such images, so whatever a photo adds is removed."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from mnist.data.batches import normalize, to_unit_float
from mnist.errors import ImageError
from mnist.inference.images import ImageSource, as_image, describe, grey_levels

IMAGE_SIZE = 28
DIGIT_BOX = 20
# MNIST's mean centre of mass (row, column) over the training set is (14.00, 14.01).
CENTRE = 14.0
# A digit smaller than this (in pixels of the shrunk image) is searched again in a
# full-resolution crop around it, so that a small digit in a large photo keeps its detail.
DETAIL_SIZE = 96
# Ink must stand this many noise deviations above the background, so that paper texture
# and sensor noise never become strokes, even when the digit is a tiny part of the image.
NOISE_SIGMAS = 4.0
# Pieces of a digit (a broken stroke, the bar of a 5) are kept when they carry this
# fraction of the main stroke's ink and lie near it; smaller specks are noise.
PIECE_FRACTION = 0.05
# This percentile of the stroke pixels maps to white, so the core of a stroke saturates
# as in MNIST, where ~45% of the stroke pixels are >= 0.9.
INK_PERCENTILE = 75


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square (a separable maximum, far faster)."""
    return ndimage.maximum_filter(mask, 2 * radius + 1, mode="constant")


def _sample(values: np.ndarray, size: int = 20_000) -> np.ndarray:
    """An evenly strided subset: medians of a few thousand pixels are as good as of all."""
    flat = values.ravel()
    return flat[:: max(1, len(flat) // size)]


def _fit_background(image: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface through the background pixels: uneven light is
    smooth, and unlike a blur or an opening the fit ignores how thick the strokes are."""
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
    """Otsu's threshold over a 256-bin histogram."""
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


def _ink_is_dark(gray: np.ndarray, radius: int) -> bool:
    """The border is mostly background; the ink is the extreme (after a blur, which strokes
    survive and pixel noise does not) furthest from it."""
    h, w = gray.shape
    ring = max(1, round(0.03 * min(h, w)))
    border = np.concatenate([gray[:ring], gray[-ring:], gray[:, :ring], gray[:, -ring:]], None)
    background = np.median(_sample(border))
    smooth = ndimage.uniform_filter(gray, 2 * radius + 1, mode="nearest")
    return background - smooth.min() > smooth.max() - background


def _ink_threshold(smooth: np.ndarray, background: np.ndarray) -> float:
    """Otsu's threshold, raised to the background's noise floor where Otsu would cut into
    the noise (it does when the ink is a tiny fraction of the image)."""
    values = _sample(smooth[background] if background.any() else smooth)
    centre = np.median(values)
    noise = 1.4826 * np.median(np.abs(values - centre))  # a robust standard deviation
    return max(_otsu(_sample(smooth, 50_000)), centre + NOISE_SIGMAS * noise)


def _digit_mask(strong: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The heaviest ink blob that does not touch the border (paper edges and shadows do),
    plus nearby pieces of real weight."""
    labels, n = ndimage.label(strong, np.ones((3, 3)))
    mass = np.bincount(labels[strong] - 1, weights=weight[strong], minlength=n)
    boxes = [(r.start, c.start, r.stop - 1, c.stop - 1) for r, c in ndimage.find_objects(labels)]
    top, left, bottom, right = np.array(boxes).T
    h, w = strong.shape
    inner = (top > 0) & (left > 0) & (bottom < h - 1) & (right < w - 1)
    candidates = inner if inner.any() else np.ones(n, bool)
    main = np.argmax(np.where(candidates, mass, -1.0))
    margin = 0.5 * max(bottom[main] - top[main], right[main] - left[main]) + 1
    near = (top >= top[main] - margin) & (bottom <= bottom[main] + margin)
    near &= (left >= left[main] - margin) & (right <= right[main] + margin)
    keep = (mass >= PIECE_FRACTION * mass[main]) & near & (candidates | (np.arange(n) == main))
    return np.concatenate([[False], keep])[labels]


def _ink(gray: np.ndarray) -> np.ndarray:
    """The digit's ink in [0, 1] (white on black, background exactly 0), same shape."""
    if np.ptp(gray) < 1 / 255:
        raise ImageError("no digit found, the image is a single flat colour")
    radius = max(1, round(max(gray.shape) / 300))
    bright = 1.0 - gray if _ink_is_dark(gray, radius) else gray
    smooth = ndimage.uniform_filter(bright, 2 * radius + 1, mode="nearest")
    exclude = _grow(smooth > _otsu(smooth), radius)
    for _ in range(2):  # fit the background without the ink, then refit without what it revealed
        residual = bright - _fit_background(bright, exclude)
        smooth = ndimage.uniform_filter(residual, 2 * radius + 1, mode="nearest")
        strong = smooth > _ink_threshold(smooth, ~exclude)
        exclude = _grow(strong, radius)
    if not strong.any():
        raise ImageError("no digit found, nothing stands out from the background")
    digit = _digit_mask(strong, np.clip(smooth, 0, None))
    rows, cols = np.nonzero(digit)
    size = max(np.ptp(rows), np.ptp(cols)) + 1
    # The soft edge below the threshold is the anti-aliasing MNIST has too.
    edge = _grow(digit, max(1, round(size / (2 * DIGIT_BOX))))
    level = np.percentile(residual[digit], INK_PERCENTILE)
    ink = np.where(edge, np.clip(residual / max(level, 1e-6), 0, 1), 0.0)
    if not ink.any():
        raise ImageError("no digit found, nothing stands out from the background")
    return ink


def _centred(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the long side to 20 px (anti-aliased, aspect kept), and
    place in 28x28 with the centre of mass at the centre."""
    rows, cols = np.nonzero(ink)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.float32)
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
    digit = np.clip(digit, 0, 1)
    if digit.sum() <= 0:
        raise ImageError("no digit found after scaling")
    cy, cx = ndimage.center_of_mass(digit)
    top = int(np.clip(round(CENTRE - cy), 0, IMAGE_SIZE - digit.shape[0]))
    left = int(np.clip(round(CENTRE - cx), 0, IMAGE_SIZE - digit.shape[1]))
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas


def _digit_ink(image: Image.Image) -> np.ndarray:
    """The digit's ink in the shrunk image; found again in a full-resolution crop around
    it (three times its size) when it came out small."""
    ink = _ink(grey_levels(image))
    shrink = max(image.size) / max(ink.shape)
    rows, cols = np.nonzero(ink)
    size = max(np.ptp(rows), np.ptp(cols)) + 1
    if shrink <= 1 or size >= DETAIL_SIZE:
        return ink
    box = np.array([cols.min() - size, rows.min() - size, cols.max() + size, rows.max() + size])
    left, top, right, bottom = np.clip(np.round(box * shrink), 0, [*image.size, *image.size])
    crop = image.crop((int(left), int(top), int(right) + 1, int(bottom) + 1))
    return _ink(grey_levels(crop))


def to_mnist(source: ImageSource) -> np.ndarray:
    """The digit in `source` as uint8 (28, 28), white on black; ImageError names the input
    when it cannot be read or holds no digit."""
    image = as_image(source)
    try:
        canvas = _centred(_digit_ink(image))
    except ImageError as e:
        raise ImageError(f"{describe(source)}: {e}") from e
    return np.round(canvas * 255).astype(np.uint8)


def model_input(digits: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) digits -> the normalised float (B, 1, 28, 28) batch training uses."""
    return normalize(to_unit_float(torch.as_tensor(digits)))
