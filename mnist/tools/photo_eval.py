"""Measured, not promised: a model's accuracy on MNIST test digits rendered as a user would
photograph, scan or draw them, read back through predict.py's preprocessing, next to its
accuracy on the originals. Only what a camera or paint program changes is varied."""

from __future__ import annotations

import io
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import ExifTags, Image, ImageFilter

from mnist.data.fetch import ensure_mnist
from mnist.data.tensors import load_mnist
from mnist.errors import ConfigError
from mnist.inference.digits import to_mnist
from mnist.inference.loading import load_model
from mnist.reporting import plots
from mnist.seeding import derive_seed, generator
from mnist.tracking import store
from mnist.training.evaluation import evaluate

log = logging.getLogger(__name__)

PAPERS = {"white": (0.95, 0.95, 0.94), "cream": (0.96, 0.92, 0.78),
          "sticky note": (0.98, 0.93, 0.55), "blue": (0.78, 0.87, 0.96),
          "pink": (0.97, 0.82, 0.86), "green": (0.82, 0.94, 0.80)}  # fmt: skip
INKS = {"pencil": (0.30, 0.30, 0.32), "black pen": (0.08, 0.08, 0.10),
        "blue pen": (0.10, 0.16, 0.55), "red pen": (0.70, 0.10, 0.12)}  # fmt: skip


def _upscaled_ink(digit: np.ndarray, scale: float) -> np.ndarray:
    """The digit's ink in [0, 1] at `scale` times its size, smooth as a pen stroke is."""
    size = round(28 * scale)
    ink = Image.fromarray(digit.astype(np.float32) / 255).resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(ink), 0, 1)


def _place(ink: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros((height, width))
    top = rng.integers(0, height - ink.shape[0] + 1)
    left = rng.integers(0, width - ink.shape[1] + 1)
    canvas[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return canvas


def _with_margin(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = (round(ink.shape[0] * rng.uniform(1.3, 2.0)) for _ in range(2))
    return _place(ink, height, width, rng)


def _lighting(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Uneven light: a gradient at a random angle times a vignette, between ~0.55 and 1."""
    y, x = np.linspace(-1, 1, height)[:, None], np.linspace(-1, 1, width)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 - rng.uniform(0.1, 0.3) * (1 + np.cos(angle) * x + np.sin(angle) * y) / 2
    vignette = 1 - rng.uniform(0.0, 0.2) * (x * x + y * y) / 2
    return gradient * vignette


def _texture(height: int, width: int, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Paper grain (blotches a few pixels across) plus per-pixel sensor noise."""
    coarse = rng.standard_normal((max(2, height // 6), max(2, width // 6)), np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    return strength * (0.6 * blotches + rng.standard_normal((height, width), np.float32))


def _on_paper(ink: np.ndarray, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """RGB in [0, 1]: a random pen on a random paper, unevenly lit, with grain."""
    paper = np.float32(PAPERS[rng.choice(list(PAPERS))]) * rng.uniform(0.9, 1.0)
    pen = np.float32(INKS[rng.choice(list(INKS))])
    height, width = ink.shape
    ink = ink.astype(np.float32)[..., None]
    light = _lighting(height, width, rng).astype(np.float32)[..., None]
    return (paper * (1 - ink) + pen * ink) * light + _texture(height, width, rng, noise)[..., None]


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8))


def paper(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A dark digit on white or coloured paper, unevenly lit, with grain and noise."""
    ink = _with_margin(_upscaled_ink(digit, rng.uniform(3, 7)), rng)
    return _to_image(_on_paper(ink, rng))


def white_on_noisy_black(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Chalk on a blackboard: a light digit on a dark, noisy, unevenly lit background."""
    ink = _with_margin(_upscaled_ink(digit, rng.uniform(3, 7)), rng)
    height, width = ink.shape
    board = rng.uniform(0.05, 0.2) * _lighting(height, width, rng)
    gray = board + (rng.uniform(0.75, 1.0) - board) * ink
    return _to_image(gray + _texture(height, width, rng, 0.06))


def marker(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A thick felt-tip stroke: the digit dilated by about a pixel of its 28x28 grid."""
    scale = rng.uniform(4, 7)
    ink = Image.fromarray(np.round(_upscaled_ink(digit, scale) * 255).astype(np.uint8))
    thick = ink.filter(ImageFilter.MaxFilter(2 * round(0.6 * scale) + 1))
    thick = np.asarray(thick.filter(ImageFilter.GaussianBlur(1)), dtype=np.float64) / 255
    return _to_image(_on_paper(_with_margin(thick, rng), rng))


def small_in_large(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A digit about 60 px tall somewhere in an 800x600 photo of paper."""
    ink = _place(_upscaled_ink(digit, rng.uniform(1.8, 2.6)), 600, 800, rng)
    return _to_image(_on_paper(ink, rng))


def transparent_png(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Drawn in a paint program on a transparent canvas: one colour, opacity = ink."""
    ink = _with_margin(_upscaled_ink(digit, rng.uniform(3, 7)), rng)
    colour = np.array(INKS[rng.choice(list(INKS))])
    rgba = np.concatenate([np.broadcast_to(colour, (*ink.shape, 3)), ink[..., None]], -1)
    return _to_image(rgba)


def phone_jpeg(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A phone photo: paper and light as above, slightly out of focus (render: JPEG, EXIF)."""
    ink = _with_margin(_upscaled_ink(digit, rng.uniform(4, 8)), rng)
    image = _to_image(_on_paper(ink, rng, noise=0.02))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6)))


STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], Image.Image]] = {
    style.__name__: style
    for style in (paper, white_on_noisy_black, marker, small_in_large, transparent_png, phone_jpeg)
}


def render(digit: np.ndarray, style: str, rng: np.random.Generator) -> bytes:
    """uint8 (28, 28) MNIST digit -> the PNG or JPEG bytes a user would hand to predict.py (a
    file, so that the measurement goes through decoding too)."""
    image = STYLES[style](digit, rng)
    buffer = io.BytesIO()
    if style == "phone_jpeg":
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
        sideways = image.transpose(Image.Transpose.ROTATE_90)
        sideways.save(buffer, "JPEG", quality=int(rng.integers(60, 86)), exif=exif)
    else:
        image.save(buffer, "PNG", compress_level=1)  # noise compresses badly; speed over size
    return buffer.getvalue()


def photo_digits(images: np.ndarray, style: str, seed: int) -> np.ndarray:
    """Each uint8 (28, 28) image rendered in `style`, then preprocessed as predict.py does."""
    rng = np.random.default_rng(derive_seed(seed, f"photo:{style}"))
    return np.stack([to_mnist(io.BytesIO(render(image, style, rng))) for image in images])


def run_photo_eval(cfg: DictConfig, output_dir: Path) -> list[dict[str, Any]]:
    """Accuracy per style on a seeded random subset (the test set's halves differ in difficulty)."""
    unknown = [style for style in cfg.styles if style not in STYLES]
    if unknown or not cfg.styles:
        raise ConfigError(f"styles={list(cfg.styles)} must be a non-empty list of {list(STYLES)}")
    if not isinstance(cfg.n, int) or cfg.n < 1:
        raise ConfigError(f"n={cfg.n!r} must be an integer >= 1 (test digits to render)")
    loaded = load_model(cfg.ckpt, store.tracking_uri(cfg.tracking_uri, cfg.paths.mlruns))
    data = load_mnist(ensure_mnist(cfg.data.root, verify=cfg.data.verify_checksums))
    order = torch.randperm(len(data.test_labels), generator=generator(cfg.seed, "photo_subset"))
    images, labels = data.test_images[order[: cfg.n]], data.test_labels[order[: cfg.n]]
    cpu = torch.device("cpu")
    original = evaluate(loaded.model, images, labels, cfg.batch_size, cpu).accuracy
    rows = [{"images": "original 28x28 MNIST", "accuracy": original, "ms_per_image": "-"}]
    output_dir.mkdir(parents=True, exist_ok=True)
    for style in cfg.styles:
        start = time.perf_counter()
        digits = torch.from_numpy(photo_digits(images.numpy(), style, cfg.seed))
        seconds = time.perf_counter() - start
        result = evaluate(loaded.model, digits, labels, cfg.batch_size, cpu)
        ms = f"{1000 * seconds / len(labels):.0f}"
        rows.append({"images": style, "accuracy": result.accuracy, "ms_per_image": ms})
        plots.plot_misclassified(
            digits, labels, result.predictions, result.probabilities,
            output_dir / f"misclassified_{style}.png", 32, f"misclassified: {style}",
        )  # fmt: skip
        log.info("%s: accuracy %.4f (%.1fs)", style, result.accuracy, seconds)
    # Every style renders the same digits: their mean is the accuracy over all renderings.
    photo_accuracy = statistics.fmean(row["accuracy"] for row in rows[1:])
    rows.append({"images": "all photo styles", "accuracy": photo_accuracy, "ms_per_image": "-"})
    lines = [
        f"Model: {loaded.source}\nTest digits: {len(labels)} (seeded subset, seed {cfg.seed})\n",
        "| images | accuracy | gap to original (pp) | render + read + preprocess, ms/image |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        row["gap_pp"] = 100 * (original - row["accuracy"])
        lines.append(
            f"| {row['images']} | {100 * row['accuracy']:.2f}% | {row['gap_pp']:+.2f} | "
            f"{row['ms_per_image']} |"
        )
    (output_dir / "photo_eval.md").write_text("\n".join(lines) + "\n")
    print(*lines, sep="\n")
    return rows
