"""PNG figures. matplotlib is imported lazily with the Agg backend: runs happen on headless
machines, and most code paths never plot."""

import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from mnist.metric_names import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from mnist.reporting import table

TITLE_CHAR_PT = 5.6  # the widest average width of a 9-point character, in points


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
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted digit", ylabel="true digit")
    ax.set_title(title)
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
    images: Tensor, labels: Tensor, predictions: Tensor, probabilities: Tensor, path: Path,
    title: str,
) -> Path:  # fmt: skip
    """A grid of digits captioned "pred p / true p" with the model's probability of each
    (a confident mistake stands out from a near tie), wrong ones in red; one mosaic image
    rather than an axes per digit, several times faster. `probabilities`: (N, 10)."""
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
    images: Tensor, labels: Tensor, predictions: Tensor, probabilities: Tensor, path: Path,
    limit: int, title: str = "misclassified test digits",
) -> Path | None:  # fmt: skip
    """The first `limit` wrong predictions among uint8 `images`; None when there are none."""
    wrong = (predictions != labels).nonzero().squeeze(1)[:limit]
    if len(wrong) == 0:
        return None
    images = images[wrong].float() / 255
    return plot_predictions(
        images, labels[wrong], predictions[wrong], probabilities[wrong], path, title
    )


def plot_augmented_inputs(originals: Tensor, variants: Tensor, path: Path, title: str) -> Path:
    """Each row a training digit as stored (N, 28, 28), then random draws (N, K, 28, 28)."""
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
    width_in = 0.55 * (k + 1) + 0.6
    fig, ax = plt.subplots(figsize=(width_in, 0.55 * n + 0.9))
    ax.imshow(mosaic.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([cell / 2, cell + gap + k * cell / 2], ["stored", "augmented (random draws)"])
    ax.tick_params(length=0, labelsize=8)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    # Wider than the figure, a title (several ops' words) would be cut at both edges.
    ax.set_title(textwrap.fill(title, int(width_in * 72 / TITLE_CHAR_PT)), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(rows: list[table.Row], title: str, path: Path) -> Path:
    """Test accuracies (mean ± std) with the references as markers, beside s / epoch."""
    plt = pyplot()
    y = list(range(len(rows)))
    fig, (acc_ax, time_ax) = plt.subplots(
        1, 2, figsize=(11, 1.8 + 0.5 * len(rows)), sharey=True, width_ratios=[3, 2]
    )
    series = [(attribute, color, name) for attribute, color, name in (
        ("final_acc", "tab:blue", "final test acc"),
        ("checkpoint_acc", "tab:orange", "best-val ckpt test acc"),
    ) if any(getattr(row, attribute) for row in rows)]  # fmt: skip
    height = 0.8 / max(len(series), 1)
    shown = []
    for n, (attribute, color, name) in enumerate(series):
        offset = (n - (len(series) - 1) / 2) * height
        bars = [(i + offset, v) for i, row in enumerate(rows) if (v := getattr(row, attribute))]
        shown += [100 * table.average(values) for _, values in bars]
        acc_ax.barh([bar_y for bar_y, _ in bars], [100 * table.average(v) for _, v in bars], height,
                    xerr=[100 * (table.deviation(v) or 0) for _, v in bars], color=color,
                    label=f"{name} (mean ± std)")  # fmt: skip
    for key, marker, color in (("final", "x", "tab:red"), ("max", "|", "black")):
        points = [(r.reference[key], i) for i, r in enumerate(rows) if (r.reference or {}).get(key)]
        shown += [value for value, _ in points]
        if points:
            acc_ax.scatter(*zip(*points, strict=True), marker=marker, color=color, s=80,
                           zorder=3, label=f"reference {key}")  # fmt: skip
    xlim = (max(0.0, min(shown, default=90.0) - 1), 100)
    acc_ax.set(xlim=xlim, xlabel="test accuracy %", title=title)
    acc_ax.set_yticks(y, [table.label(row) for row in rows])
    acc_ax.invert_yaxis()
    time_ax.barh(y, [table.average(row.epoch_time_s) or 0 for row in rows], color="tab:gray")
    time_ax.set(xlabel="seconds per epoch", title="cost")
    if acc_ax.get_legend_handles_labels()[0]:  # none when no run finished and no reference
        fig.legend(loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, path)
