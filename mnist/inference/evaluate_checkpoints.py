"""scripts/evaluate.py: a model, or an ensemble (the best MNIST results are ensembles), on the
test set or on the validation images its run held out, with a training run's reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from mnist.config import flatten
from mnist.context import JobContext
from mnist.data.fetch import ensure_mnist
from mnist.data.tensors import MnistTensors, load_mnist, split_indices
from mnist.errors import ConfigError
from mnist.inference.loading import LoadedModel, load_model
from mnist.reporting.reports import write_test_reports
from mnist.tracking import runs, store
from mnist.training.device import DeviceSettings, configure_torch, resolve_device
from mnist.training.evaluation import Evaluation, accuracy, evaluate

# Test-time augmentation: MNIST digits are centred by mass, so a one-pixel error in that
# centring is the variation a test image most likely has.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
SPLITS = ("test", "val")


def shifted(images: Tensor, dy: int, dx: int) -> Tensor:
    h, w = images.shape[-2:]
    p = max(abs(dy), abs(dx))
    return F.pad(images, (p, p, p, p))[..., p - dy : p - dy + h, p - dx : p - dx + w]


def averaged(results: Sequence[Evaluation], labels: Tensor) -> Evaluation:
    """Softmax outputs averaged; the loss is that of the averaged probabilities."""
    probabilities = torch.stack([result.probabilities for result in results]).mean(0)
    predictions = probabilities.argmax(1)
    return Evaluation(
        loss=F.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item(),
        accuracy=accuracy(predictions, labels),
        predictions=predictions,
        probabilities=probabilities,
    )


def evaluate_model(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, device: torch.device,
    tta: bool,
) -> Evaluation:  # fmt: skip
    if not tta:
        return evaluate(model, images, labels, batch_size, device)
    shifts = [shifted(images, dy, dx) for dy, dx in TTA_SHIFTS]
    return averaged([evaluate(model, s, labels, batch_size, device) for s in shifts], labels)


def checkpoint_specs(cfg: DictConfig) -> list[str | None]:
    """The `ckpt` option as a list, once the other options are checked."""
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r} must be an integer >= 1")
    if not isinstance(cfg.grid_size, int) or cfg.grid_size < 0:
        raise ConfigError(f"grid_size={cfg.grid_size!r} must be an integer >= 0")
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} must be one of {', '.join(SPLITS)}")
    ckpt = cfg.ckpt
    if isinstance(ckpt, ListConfig):
        if not ckpt:
            raise ConfigError("ckpt=[] names no model; give one checkpoint or several")
        return [str(spec) for spec in ckpt]
    return [None if ckpt is None else str(ckpt)]


def validation_split(members: list[LoadedModel]) -> DictConfig:
    """The config of the run whose validation images all members held out (members of
    different splits each trained on the others' validation images)."""
    splits = set()
    for member in members:
        data = member.config.get("data", {})
        if "val_size" not in data or "seed" not in member.config:
            raise ConfigError(
                f"split=val: {member.source} does not record its run's validation split "
                "(seed, data.val_size); evaluate it on split=test"
            )
        splits.add((int(member.config["seed"]), int(data["val_size"]), bool(data["stratify"])))
    if len(splits) > 1:
        raise ConfigError(
            f"split=val: the models held out different validation images (seed, val_size, "
            f"stratify: {sorted(splits)}); an ensemble of runs with different seeds can only "
            "be evaluated on split=test"
        )
    return OmegaConf.create(members[0].config)


def split_images(data: MnistTensors, held_out: DictConfig | None) -> tuple[Tensor, Tensor]:
    if held_out is None:
        return data.test_images, data.test_labels
    split = held_out.data
    _, val_idx = split_indices(data.train_labels, split.val_size, held_out.seed, split.stratify)
    val_idx = val_idx.to(data.train_labels.device)
    return data.train_images[val_idx], data.train_labels[val_idx]


def _members_table(members: list[LoadedModel], results: list[Evaluation], split: str) -> str:
    lines = [f"| model | {split} accuracy | errors | loss |", "|---|---:|---:|---:|"]
    for member, result in zip(members, results, strict=True):
        errors = round((1 - result.accuracy) * len(result.predictions))
        lines.append(
            f"| {member.source} | {100 * result.accuracy:.2f}% | {errors} | {result.loss:.4f} |"
        )
    return "\n".join(lines) + "\n"


def run_evaluation(cfg: DictConfig, ctx: JobContext) -> dict[str, Any]:
    """The metrics; the reports (the ensemble's, for several checkpoints) go to
    ctx.output_dir and, with cfg.log, to MLflow. ConfigError before any side effect."""
    specs = checkpoint_specs(cfg)
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    if cfg.log:
        store.check_store(uri, read_only_option="log=false")
    members = [load_model(spec, uri) for spec in specs]
    held_out = validation_split(members) if cfg.split == "val" else None
    device = resolve_device(cfg.device.name)
    configure_torch(device, DeviceSettings(**cfg.device), deterministic=False)
    data = load_mnist(ensure_mnist(cfg.data.root, verify=cfg.data.verify_checksums), device)
    images, labels = split_images(data, held_out)
    results = [
        evaluate_model(member.model.to(device), images, labels, cfg.batch_size, device, cfg.tta)
        for member in members
    ]
    result = results[0] if len(results) == 1 else averaged(results, labels)
    out, split = ctx.output_dir, cfg.split
    out.mkdir(parents=True, exist_ok=True)
    report, table, artifacts = write_test_reports(out, images, labels, result, cfg.grid_size)
    errors = int((result.predictions != labels).sum())
    metrics = {
        f"{split}/acc": result.accuracy,
        f"{split}/loss": result.loss,
        f"{split}/errors": errors,
        f"{split}/macro_f1": report["macro_avg"]["f1"],
    }
    tta = " with test-time augmentation (5 shifts)" if cfg.tta else ""
    if len(members) > 1:
        metrics |= {f"member{i}/{split}/acc": r.accuracy for i, r in enumerate(results)}
        members_table = _members_table(members, results, split)
        (out / "members.md").write_text(members_table)
        artifacts.append(out / "members.md")
        print(f"Ensemble of {len(members)} models{tta}:\n\n{members_table}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    artifacts.append(out / "metrics.json")
    name = members[0].source if len(members) == 1 else f"ensemble of {len(members)}"
    images_name = "Test set" if held_out is None else f"Validation images of seed {held_out.seed}"
    print(
        f"Model: {name}\n{images_name}: {len(labels)} images{tta}\n"
        f"accuracy {result.accuracy:.4f}  loss {result.loss:.4f}  errors {errors}"
        f"\n\n{table}\nReports in {out}"
    )
    if cfg.log:
        _log_to_mlflow(cfg, ctx, uri, members, metrics, artifacts, device)
    return metrics


def _log_to_mlflow(
    cfg: DictConfig,
    ctx: JobContext,
    uri: str,
    members: list[LoadedModel],
    metrics: dict[str, float],
    artifacts: list[Path],
    device: torch.device,
) -> None:
    """A run of its own, with the (first) trained run's config as `trained.*` params."""
    trained = members[0].config
    model_name = str(trained["model"]["_target_"]).rsplit(".", 1)[-1]
    tags = runs.run_tags(int(trained.get("seed", 0)), device, ctx.overrides, model_name)
    tags["evaluated.checkpoint"] = ", ".join(member.source for member in members)
    params = {"checkpoint": tags["evaluated.checkpoint"], "split": cfg.split, "tta": cfg.tta,
              "members": len(members), **flatten({"trained": trained})}  # fmt: skip
    for i, member in enumerate(members if len(members) > 1 else []):
        params[f"member{i}.checkpoint"] = member.source
        params[f"member{i}.model"] = member.config["model"]["_target_"]
    default_name = f"evaluate {model_name}" if len(members) == 1 else "evaluate ensemble"
    run_name = cfg.logger.run_name or default_name
    experiment = cfg.logger.experiment
    runs.log_run(uri, experiment, run_name, tags, params, metrics, artifacts, "the evaluation")
