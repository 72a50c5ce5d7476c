"""scripts/evaluate.py: a trained model on the MNIST test set, with the reports of a
training run (per-class table, confusion matrix, misclassified digits), optionally with
test-time augmentation, optionally logged to MLflow as a run of its own."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from mnist import plots, tracking
from mnist.config import ConfigError, flatten
from mnist.data import ensure_mnist, load_mnist
from mnist.device import configure_torch, resolve_device
from mnist.inference import LoadedModel, load_model
from mnist.job import JobContext, write_test_reports
from mnist.trainer import Evaluation, evaluate

log = logging.getLogger(__name__)

# Test-time augmentation: the image as is and moved one pixel each way; the model's
# softmax outputs are averaged. Shifts only: MNIST digits are centred by mass, so a
# one-pixel error in that centring is the variation a test image most likely has.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(images: Tensor, dy: int, dx: int) -> Tensor:
    """(..., H, W) images moved down by dy and right by dx pixels, filled with zeros."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def evaluate_tta(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, device: torch.device
) -> Evaluation:
    """`mnist.trainer.evaluate` on each shifted copy, softmax outputs averaged."""
    runs = [
        evaluate(model, shifted(images, dy, dx), labels, batch_size, device)
        for dy, dx in TTA_SHIFTS
    ]
    probabilities = torch.stack([run.probabilities for run in runs]).mean(0)
    predictions = probabilities.argmax(1)
    return Evaluation(
        loss=F.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item(),
        accuracy=(predictions == labels).double().mean().item(),
        predictions=predictions,
        probabilities=probabilities,
    )


def _reports(
    images: Tensor, labels: Tensor, result: Evaluation, output_dir: Path, grid: int
) -> tuple[dict[str, Any], str, list[Path]]:
    report, table, paths = write_test_reports(output_dir, result.predictions, labels)
    wrong = (result.predictions != labels).nonzero().squeeze(1)[:grid]
    if len(wrong):
        paths.append(
            plots.plot_predictions(
                images[wrong].float() / 255,
                labels[wrong],
                result.predictions[wrong],
                result.probabilities[wrong].max(1).values,
                output_dir / "misclassified.png",
            )
        )
    return report, table, paths


def run_evaluation(cfg: DictConfig, ctx: JobContext) -> dict[str, Any]:
    """Returns the metrics; writes the reports to ctx.output_dir and, with cfg.log, logs
    everything to MLflow. Raises ConfigError or DataError before any side effect."""
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r} must be an integer >= 1")
    if not isinstance(cfg.grid_size, int) or cfg.grid_size < 0:
        raise ConfigError(f"grid_size={cfg.grid_size!r} must be an integer >= 0")
    uri = tracking.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    loaded = load_model(cfg.ckpt, uri)
    device = resolve_device(cfg.device.name)
    configure_torch(device, cfg.device.num_threads, deterministic=False)
    model = loaded.model.to(device)
    data = load_mnist(ensure_mnist(cfg.data.root, verify=cfg.data.verify_checksums), device)
    images, labels = data.test_images, data.test_labels
    if cfg.tta:
        result = evaluate_tta(model, images, labels, cfg.batch_size, device)
    else:
        result = evaluate(model, images, labels, cfg.batch_size, device)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    report, table, artifacts = _reports(images, labels, result, ctx.output_dir, cfg.grid_size)
    metrics = {
        "test/acc": result.accuracy,
        "test/loss": result.loss,
        "test/errors": int((result.predictions != labels).sum()),
        "test/macro_f1": report["macro_avg"]["f1"],
    }
    (ctx.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    artifacts.append(ctx.output_dir / "metrics.json")
    print(
        f"Model: {loaded.source}\nTest set: {len(labels)} images"
        f"{' with test-time augmentation (5 shifts)' if cfg.tta else ''}\n"
        f"accuracy {result.accuracy:.4f}  loss {result.loss:.4f}  errors {metrics['test/errors']}"
        f"\n\n{table}\nReports in {ctx.output_dir}"
    )
    if cfg.log:
        _log_to_mlflow(cfg, ctx, uri, loaded, metrics, artifacts, device)
    return metrics


def _log_to_mlflow(
    cfg: DictConfig,
    ctx: JobContext,
    uri: str,
    loaded: LoadedModel,
    metrics: dict[str, float],
    artifacts: list[Path],
    device: torch.device,
) -> None:
    """A run of its own (in logger.experiment, not the training experiment), tagged like a
    training run and with the trained run's config as `trained.*` params."""
    trained = loaded.config
    model_name = str(trained["model"]["_target_"]).rsplit(".", 1)[-1]
    tags = tracking.run_tags(int(trained.get("seed", 0)), device, ctx.overrides, model_name)
    tags["evaluated.checkpoint"] = loaded.source
    params = {"checkpoint": loaded.source, "tta": cfg.tta, **flatten({"trained": trained})}
    run_name = cfg.logger.run_name or f"evaluate {model_name}"
    with tracking.mlflow_run(uri, cfg.logger.experiment, run_name, tags, params) as run:
        tracking.log_metrics(metrics)
        tracking.log_artifacts(artifacts)
        log.info("Logged to MLflow run %s in %s", run.info.run_id, uri)
