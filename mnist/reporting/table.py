"""The comparison of many runs as a Markdown table with its footnotes and a CSV. Rows come
best validation accuracy first; the winner is marked by it, never by the test set."""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One model (and one value of each key that splits its runs)."""

    model: str
    groups: dict[str, str]
    finished: int = 0
    params: int | None = None
    conv_layers: int | None = None
    pooling: str = "n/a"
    epochs: list[int] = field(default_factory=list)
    final_acc: list[float] = field(default_factory=list)  # last-epoch test acc, per run
    max_acc: list[float] = field(default_factory=list)  # best test acc over epochs, per run
    checkpoint_acc: list[float] = field(default_factory=list)  # test acc of best-val weights
    val_acc: list[float] = field(default_factory=list)  # their validation acc, per run
    epoch_time_s: list[float] = field(default_factory=list)  # every epoch of every run
    train_time_s: list[float] = field(default_factory=list)
    img_per_s: list[float] = field(default_factory=list)
    train_images: list[int | None] = field(default_factory=list)  # per finished run
    mixed: list[str] = field(default_factory=list)  # keys its runs differ in, but the seed
    unfinished: list[Any] = field(default_factory=list)  # MLflow runs
    reference: dict[str, Any] | None = None


NOTES = """\
- **final**: test accuracy after the last epoch (`test/acc_epoch`, logged with
  `trainer.test_every_epoch=true`), mean ± sample std over the finished runs (seeds).
- **max**: the best test accuracy of any epoch of any run: what the reference tables call
  "max acc". It peeks at the test set, like the references do."""
NO_EPOCH_NOTE = """\
- No run logged the test accuracy per epoch (`trainer.test_every_epoch=true`), so the
  final and max test accuracy columns are left out."""
COMMON_NOTES = """\
- **best val acc**: the best validation accuracy of each run (`best/val_acc`), mean ± std;
  rows are sorted by it and ★ marks the highest: the pick made without the test set.
- **best-val ckpt**: test accuracy of the weights with the best validation accuracy
  (`test/acc`), mean ± std: the number chosen without looking at the test set.
- **vs ref**: that mean minus the reference's target, in points: its final accuracy, else
  its max, else its stated goal (`conf/compare.yaml`); negative is short of it. Only for a
  row trained on as many images, and for as many epochs where the reference states them;
  **n/c** (not comparable) otherwise.
- **s / epoch** includes evaluation and checkpointing; **img/s** is training throughput.
  Both depend on the machine and on how many jobs shared it (tag `torch.num_threads`)."""


def average(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def deviation(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _percent_spread(values: list[float]) -> str:
    std = deviation(values)
    return _percent(average(values)) + ("" if std is None else f" ± {100 * std:.2f}")


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _epochs(row: Row) -> str:
    low, high = min(row.epochs, default=None), max(row.epochs, default=None)
    return "n/a" if low is None else str(low) if low == high else f"{low}-{high}"


def _reference(row: Row, key: str) -> str:
    ref = row.reference or {}
    epochs = f" ({ref['epochs']} ep)" if ref.get("epochs") else ""
    return "-" if ref.get(key) is None else f"{ref[key]:.2f}{epochs}"


def _incomparable(row: Row) -> str | None:
    """Why the row cannot be measured against its reference (other images or epochs)."""
    ref = row.reference or {}
    same_images = set(row.train_images) == {ref.get("train_images")}
    same_epochs = ref.get("epochs") is None or set(row.epochs) == {ref["epochs"]}
    if same_images and same_epochs:
        return None
    images = "/".join(
        "?" if n is None else f"{n:,}" for n in sorted(set(row.train_images), key=lambda n: n or 0)
    )
    ref_epochs = f", {ref['epochs']} epochs" if ref.get("epochs") else ""
    epochs = _epochs(row)
    return (
        f"{images} training images, {epochs} epoch{'' if epochs == '1' else 's'}; the reference "
        f"{ref.get('train_images') or 0:,} images{ref_epochs}"
    )


def _versus(row: Row) -> float | str | None:
    """The row's mean minus its reference's final, else max, else goal; "n/c": not comparable."""
    ref = row.reference or {}
    goal = next((ref[key] for key in ("final", "max", "goal") if ref.get(key) is not None), None)
    if goal is None or not row.checkpoint_acc:
        return None
    return "n/c" if _incomparable(row) else 100 * average(row.checkpoint_acc) - goal


def label(row: Row) -> str:
    return " ".join([row.model, *(f"{k}={v}" for k, v in row.groups.items())])


def markdown(rows: list[Row], title: str, only: tuple[str, ...] = ()) -> str:
    """The table, ★ on the first row with a validation accuracy; final and max test accuracy
    only where some run logged it per epoch. `only`: these columns, and no notes."""
    per_epoch = any(row.final_acc for row in rows)
    winner = next((row for row in rows if row.val_acc), None)
    columns: list[tuple[str, Any]] = [
        ("params", lambda row: _number(row.params, 0)),
        ("conv layers", lambda row: "n/a" if row.conv_layers is None else str(row.conv_layers)),
        ("pooling", lambda row: row.pooling),
        ("epochs", _epochs),
        ("runs", lambda row: f"{row.finished}" + (f" + {len(row.unfinished)} failed"
                 if row.unfinished else "") + (" (mixed)" if row.mixed else "")),
        *([("final test acc %", lambda row: _percent_spread(row.final_acc)),
           ("max test acc %", lambda row: _percent(max(row.max_acc, default=None)))]
          if per_epoch else []),
        ("best val acc %", lambda row: _percent_spread(row.val_acc)),
        ("best-val ckpt test acc %", lambda row: _percent_spread(row.checkpoint_acc)),
        ("s / epoch", lambda row: _number(average(row.epoch_time_s))),
        ("train time s", lambda row: _number(average(row.train_time_s))),
        ("img/s", lambda row: _number(average(row.img_per_s), 0)),
        ("ref final %", lambda row: _reference(row, "final")),
        ("ref max %", lambda row: _reference(row, "max")),
        ("vs ref", lambda row: "-" if (v := _versus(row)) is None else
                    v if isinstance(v, str) else f"{v:+.2f}"),
    ]  # fmt: skip
    columns = [column for column in columns if not only or column[0] in only]
    header = ["model", *rows[0].groups, *(name for name, _ in columns)]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        model = row.model + (" ★" if row is winner else "")
        cells = [model, *row.groups.values(), *(cell(row) for _, cell in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    if not only:
        lines += ["", NOTES if per_epoch else NO_EPOCH_NOTE, COMMON_NOTES]
        lines += [f"- **mixed** {label(row)}: pools runs that differ in {', '.join(row.mixed)}; "
                  "leave group_by unset to split them" for row in rows if row.mixed]  # fmt: skip
        lines += [f"- **n/c** {label(row)}: {_incomparable(row)}"
                  for row in rows if _versus(row) == "n/c"]  # fmt: skip
        sources = [f"- {row.model}: {row.reference['source']}" for row in rows if row.reference]
        lines += ["", "References:", *dict.fromkeys(sources)] if sources else []
    failed = [(row, run) for row in rows for run in row.unfinished]
    if failed:
        lines += ["", "Runs that did not finish:", "", "| row | run | status | run id |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {label(row)} | {run.info.run_name} | {run.info.status} | {run.info.run_id} |"
            for row, run in failed
        ]
    return "\n".join(lines) + "\n"


# The columns that fit the half of a run's page MLflow gives its description.
DESCRIPTION_COLUMNS = ("runs", "best val acc %", "best-val ckpt test acc %", "train time s")
# MLflow keeps tag values (a run's description) of up to 8000 characters.
MAX_DESCRIPTION = 8000


def description(rows: list[Row], title: str, about: str) -> str:
    """The winner, `about`, then the table's key columns where MLflow keeps that much."""
    winner = next((row for row in rows if row.val_acc), None)
    found = (
        f"**Winner: {label(winner)}** by validation accuracy, "
        f"{_percent_spread(winner.val_acc)}% over {winner.finished} "
        f"run{'' if winner.finished == 1 else 's'}; the test accuracy of "
        f"the same weights {_percent_spread(winner.checkpoint_acc)}%."
        if winner
        else "No run finished with a validation accuracy."
    )
    text = f"{found}\n\n{about}\n\n{markdown(rows, title, DESCRIPTION_COLUMNS)}"
    return text if len(text) <= MAX_DESCRIPTION else f"{found}\n\n{about}"


def summary_metrics(rows: list[Row]) -> dict[str, float]:
    """Each row's key metrics' mean and std, e.g. summary/fast/test/acc_mean: one chart section."""
    metrics = {}
    for row in rows:
        name = re.sub(r"[^\w./ -]", "_", label(row))  # as MLflow metric names allow it
        for key, values in (("test/acc", row.checkpoint_acc), ("best/val_acc", row.val_acc),
                            ("train_time_s", row.train_time_s)):  # fmt: skip
            if values:
                metrics[f"summary/{name}/{key}_mean"] = statistics.fmean(values)
            if len(values) > 1:
                metrics[f"summary/{name}/{key}_std"] = statistics.stdev(values)
    return metrics


def write_csv(rows: list[Row], path: Path) -> Path:
    """Numbers to 6 significant digits (MLflow's view showed float noise, 76.42999999999999),
    accuracies in percent like the references; vs_ref empty where the table says n/c."""

    def pct(value: float | None) -> float | None:
        return None if value is None else 100 * value

    def cell(value: Any) -> Any:
        return f"{value:.6g}" if isinstance(value, float) else value

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", *rows[0].groups, "params", "conv_layers", "pooling",
                         "epochs", "train_images", "runs", "failed", "mixed", "final_acc_mean",
                         "final_acc_std", "max_acc", "best_val_acc_mean", "best_val_acc_std",
                         "best_val_ckpt_acc_mean", "best_val_ckpt_acc_std", "epoch_time_s",
                         "train_time_s", "img_per_s", "ref_final_acc", "ref_max_acc",
                         "vs_ref"])  # fmt: skip
        for row in rows:
            ref = row.reference or {}
            writer.writerow(map(cell, [row.model, *row.groups.values(), row.params, row.conv_layers,
                             row.pooling, max(row.epochs, default=None),
                             "/".join(sorted({str(n) for n in row.train_images})), row.finished,
                             len(row.unfinished), ",".join(row.mixed), pct(average(row.final_acc)),
                             pct(deviation(row.final_acc)), pct(max(row.max_acc, default=None)),
                             pct(average(row.val_acc)), pct(deviation(row.val_acc)),
                             pct(average(row.checkpoint_acc)), pct(deviation(row.checkpoint_acc)),
                             average(row.epoch_time_s), average(row.train_time_s),
                             average(row.img_per_s), ref.get("final"), ref.get("max"),
                             None if isinstance(v := _versus(row), str) else v]))  # fmt: skip
    return path
