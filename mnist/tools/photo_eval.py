"""Measured, not promised: a model's accuracy on photo-like renderings of MNIST test digits,
read back as files through predict.py's preprocessing, next to its accuracy on the originals."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from mnist.data.fetch import ensure_mnist
from mnist.data.tensors import load_mnist
from mnist.errors import ConfigError
from mnist.inference.digits import to_mnist
from mnist.inference.loading import load_model
from mnist.reporting import plots
from mnist.seeding import derive_seed, generator
from mnist.tools.photos import STYLES, render
from mnist.tracking import store
from mnist.training.evaluation import evaluate

log = logging.getLogger(__name__)


def photo_digits(images: np.ndarray, style: str, seed: int) -> np.ndarray:
    """Each uint8 (28, 28) image rendered in `style`, then preprocessed as predict.py does."""
    rng = np.random.default_rng(derive_seed(seed, f"photo:{style}"))
    return np.stack([to_mnist(io.BytesIO(render(image, style, rng))) for image in images])


def run_photo_eval(cfg: DictConfig, output_dir: Path) -> list[dict[str, Any]]:
    """Accuracy per style on `cfg.n` test digits (a seeded random subset: the test set's two
    halves differ in difficulty), as a Markdown table."""
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
    all_correct = 0
    for style in cfg.styles:
        start = time.perf_counter()
        digits = torch.from_numpy(photo_digits(images.numpy(), style, cfg.seed))
        seconds = time.perf_counter() - start
        result = evaluate(loaded.model, digits, labels, cfg.batch_size, cpu)
        all_correct += int((result.predictions == labels).sum())
        ms = f"{1000 * seconds / len(labels):.0f}"
        rows.append({"images": style, "accuracy": result.accuracy, "ms_per_image": ms})
        plots.plot_misclassified(
            digits, labels, result.predictions, result.probabilities,
            output_dir / f"misclassified_{style}.png", 32, f"misclassified: {style}",
        )  # fmt: skip
        log.info("%s: accuracy %.4f (%.1fs)", style, result.accuracy, seconds)
    photo_accuracy = all_correct / (len(labels) * len(cfg.styles))
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
    report = "\n".join(lines) + "\n"
    (output_dir / "photo_eval.md").write_text(report)
    print(report, end="")
    return rows
