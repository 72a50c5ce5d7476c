"""PNG figures of a run. matplotlib is imported lazily and with the Agg backend: runs
happen on headless machines, and most code paths never plot."""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from mnist.metric_names import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plot_confusion_matrix(matrix: Tensor, path: Path, title: str = "Confusion matrix") -> Path:
    plt = pyplot()
    counts = matrix.cpu().numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    n = len(counts)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xlabel="predicted digit",
        ylabel="true digit",
        title=title,
    )
    threshold = counts.max() / 2
    for i in range(n):
        for j in range(n):
            color = "white" if counts[i, j] > threshold else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy (train vs validation) and the learning rate, per epoch."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = [("loss", TRAIN_LOSS, VAL_LOSS), ("accuracy", TRAIN_ACC, VAL_ACC)]
    for ax, (label, *curves) in zip(axes, panels, strict=False):
        for split, name in zip(("train", "val"), curves, strict=True):
            ax.plot(epochs, [row[name] for row in history], marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=label, title=f"{label}: train vs validation")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [row["lr"] for row in history], marker="o", color="tab:green")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate at epoch start")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_predictions(
    images: Tensor,
    labels: Tensor,
    predictions: Tensor,
    probabilities: Tensor,
    path: Path,
    title: str = "test digits",
) -> Path:
    """A grid of digits captioned "pred p / true p" with the model's probability of each
    (so a confident mistake stands out from a near tie), wrong predictions in red. Drawn as
    one mosaic image rather than one axes per digit, which is several times faster.
    `probabilities`: the (N, 10) softmax outputs."""
    plt = pyplot()
    n = len(images)
    columns = min(8, n)
    rows = (n + columns - 1) // columns
    # Each cell: a white caption band above a 28x28 digit, with a white margin.
    width, height, band = 28 + 8, 28 + 12, 10
    mosaic = torch.ones(rows * height, columns * width)
    for i, image in enumerate(images.cpu().float()):
        r, c = divmod(i, columns)
        top, left = r * height + band, c * width + 4
        mosaic[top : top + 28, left : left + 28] = image.squeeze()
    fig, ax = plt.subplots(figsize=(1.5 * columns, 1.6 * rows + 0.5))
    ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    probabilities = probabilities.cpu()
    for i, (label, pred) in enumerate(zip(labels.tolist(), predictions.tolist(), strict=True)):
        r, c = divmod(i, columns)
        p_pred, p_true = probabilities[i, pred].item(), probabilities[i, label].item()
        caption = f"{pred} {p_pred:.2f}"
        if pred != label:
            caption += f" / {label} {p_true:.2f}"
        ax.text(
            c * width + width / 2, r * height + band - 1.5, caption,
            ha="center", va="bottom", fontsize=6.5,
            color="black" if pred == label else "red",
        )  # fmt: skip
    ax.set_title(f"{title}\npredicted p / true p (probabilities); wrong in red", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (1.6 * rows + 0.5))
    return _save(fig, path)


def plot_misclassified(
    images: Tensor,
    labels: Tensor,
    predictions: Tensor,
    probabilities: Tensor,
    path: Path,
    limit: int,
    title: str = "misclassified test digits",
) -> Path | None:
    """The first `limit` wrong predictions among uint8 `images`; None when there are none."""
    wrong = (predictions != labels).nonzero().squeeze(1)[:limit]
    if len(wrong) == 0:
        return None
    return plot_predictions(
        images[wrong].float() / 255,
        labels[wrong],
        predictions[wrong],
        probabilities[wrong],
        path,
        title,
    )


def plot_augmented_inputs(originals: Tensor, variants: Tensor, path: Path, title: str) -> Path:
    """What the model is trained on: each row a training digit as stored, then random
    draws of the run's augmentation. originals (N, 28, 28), variants (N, K, 28, 28), in
    [0, 1]."""
    plt = pyplot()
    n, k = variants.shape[:2]
    cell, gap = 30, 10  # a 1-px margin around each digit; a gap after the originals
    # Ink dark on white (the gray_r colour map); margins light grey to frame each digit.
    mosaic = torch.full((n * cell, (k + 1) * cell + gap), 0.15)
    for row in range(n):
        top = row * cell + 1
        mosaic[top : top + 28, 1:29] = originals[row].cpu()
        for column in range(k):
            left = (column + 1) * cell + gap + 1
            mosaic[top : top + 28, left : left + 28] = variants[row, column].cpu()
    fig, ax = plt.subplots(figsize=(0.55 * (k + 1) + 0.6, 0.55 * n + 0.9))
    ax.imshow(mosaic.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([cell / 2, cell + gap + k * cell / 2], ["stored", "augmented (random draws)"])
    ax.tick_params(length=0, labelsize=8)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
