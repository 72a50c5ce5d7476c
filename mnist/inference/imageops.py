"""The few image operations digit finding needs, in numpy on float arrays: a box blur,
binary dilation, Otsu's threshold, a least-squares background surface and connected
components. Short in numpy, and not worth a scipy/OpenCV dependency."""

from __future__ import annotations

import numpy as np


def box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, by summed-area table: cost independent of radius."""
    if radius < 1:
        return values
    k = 2 * radius + 1
    padded = np.pad(values, radius, mode="edge")
    sums = np.pad(padded.cumsum(0), ((1, 0), (0, 0)))
    rows = sums[k:] - sums[:-k]
    sums = np.pad(rows.cumsum(1), ((0, 0), (1, 0)))
    return (sums[:, k:] - sums[:, :-k]) / (k * k)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
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


def sample(values: np.ndarray, size: int = 20_000) -> np.ndarray:
    """An evenly strided subset: medians of a few thousand pixels are as good as of all."""
    flat = values.ravel()
    return flat[:: max(1, len(flat) // size)]


def fit_background(image: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface through the background pixels: uneven lighting and
    vignetting are smooth, so six coefficients model them, and unlike a blur or a
    morphological opening the fit does not depend on how thick the strokes are."""
    h, w = image.shape
    step = max(1, int(np.sqrt(h * w / 5_000)))
    y, x = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
    keep = ~exclude[::step, ::step]
    if keep.sum() < 6:
        return np.full_like(image, np.median(sample(image)))
    ys, xs = (grid[keep] for grid in np.meshgrid(y[::step], x[::step], indexing="ij"))
    basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], 1)
    c, *_ = np.linalg.lstsq(basis, image[::step, ::step][keep], rcond=None)
    y, x = y[:, None], x[None, :]
    surface = c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y
    return surface.astype(image.dtype)


def otsu(values: np.ndarray) -> float:
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


def components(mask: np.ndarray) -> np.ndarray:
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
