"""One training job, start to finish: validate the config, prepare data and model, train
inside an MLflow run, then test the best-validation checkpoint and log the reports."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mnist import plots, sweep, tracking
from mnist.augment import BatchAugment
from mnist.checkpoint import load_checkpoint, state_dict_sha256
from mnist.config import ConfigError, flatten, validate_config
from mnist.data import (
    ensure_mnist,
    load_mnist,
    normalize,
    split_indices,
    to_unit_float,
)
from mnist.device import configure_torch, resolve_device
from mnist.metrics import classification_report, confusion_matrix, format_report
from mnist.models import build_model, format_summary, summarize
from mnist.optim import build_optimizer, build_scheduler
from mnist.resume import load_resume_checkpoint, resume_config
from mnist.seeding import derive_seed, generator, seed_everything
from mnist.trainer import Evaluation, evaluate, fit

log = logging.getLogger(__name__)

SAMPLE_GRID_SIZE = 32
# The augmentation preview: random draws of the augmentation per digit.
PREVIEW_DRAWS = 7


@dataclass
class JobContext:
    """What Hydra knows about the job and the config does not: where to write, how the
    job was asked for, and which option of each config group was chosen."""

    output_dir: Path
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    # Hydra's override_dirname: the overrides minus where-to-write keys, e.g. "model=cnn2,seed=1".
    override_dirname: str = ""
    # The MLflow run of the sweep this job is part of (mnist/sweep.py); None outside one.
    parent_run_id: str | None = None
    # Added to the run's tags, e.g. the source run of a reproduction.
    extra_tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_hydra(cls) -> JobContext:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        return cls(
            output_dir=Path(hydra.runtime.output_dir),
            overrides=list(hydra.overrides.task),
            choices={k: v for k, v in hydra.runtime.choices.items() if v is not None},
            override_dirname=hydra.job.override_dirname,
            parent_run_id=sweep.parent_run_id(hydra),
        )

    @property
    def run_name(self) -> str:
        return self.override_dirname or self.choices.get("model", "run")


def prepare_split(cfg: DictConfig, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    train_idx, val_idx = split_indices(labels, cfg.data.val_size, cfg.seed, cfg.data.stratify)
    if cfg.data.train_subset is not None:
        train_idx = train_idx[: cfg.data.train_subset]
    return train_idx.to(labels.device), val_idx.to(labels.device)


def initial_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The model before training: weights from the seed alone, on `device`, in the memory
    layout the trainer config asks for."""
    torch.manual_seed(derive_seed(cfg.seed, "model"))
    model = build_model(cfg.model).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def augmentation_preview(
    cfg: DictConfig, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(originals (N, 28, 28), augmented draws (N, K, 28, 28), a description): what the
    model is trained on, for the first training image of each digit. Drawn from a
    generator of its own, so the run's training stream of random numbers is the same
    whether or not anyone looks."""
    augment = BatchAugment.from_config(
        cfg.augmentation, generator(cfg.seed, "augment-preview", images.device)
    )
    _, first = np.unique(labels[indices].cpu().numpy(), return_index=True)
    originals = to_unit_float(images[indices[torch.from_numpy(first).to(indices.device)]])
    draws = augment(originals.repeat_interleave(PREVIEW_DRAWS, 0))
    description = f"augmentation={cfg.augmentation.name}: {augment.describe()}"
    return originals[:, 0], draws.view(len(originals), PREVIEW_DRAWS, 28, 28), description


def run_training(cfg: DictConfig, ctx: JobContext) -> dict[str, Any]:
    """Returns the final metrics. Raises ConfigError, DataError or TrackingError before any
    side effect in mlruns/ when the config, the data or the store cannot work."""
    validate_config(cfg)
    uri = tracking.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    resume_state = None
    if cfg.trainer.resume:
        checkpoint_path, resume_state = load_resume_checkpoint(cfg.trainer.resume, uri)
        log.info("Resuming %s with the run's own config", checkpoint_path)
        cfg = resume_config(resume_state, checkpoint_path)
        ctx.output_dir = checkpoint_path.parent.parent
        uri = tracking.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    tracking.check_store(uri)
    device = resolve_device(cfg.device.name)
    configure_torch(device, cfg.device, cfg.trainer.deterministic)
    seed_everything(cfg.seed)

    root = ensure_mnist(cfg.data.root, verify=cfg.data.verify_checksums)
    data = load_mnist(root, device)
    train_idx, val_idx = prepare_split(cfg, data.train_labels)

    model = initial_model(cfg, device)
    optimizer = build_optimizer(cfg.optimizer, model)
    steps_per_epoch = max(1, len(train_idx) // cfg.trainer.batch_size)
    schedule = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.epochs, steps_per_epoch)
    augment = BatchAugment.from_config(cfg.augmentation, generator(cfg.seed, "augment", device))
    summary = summarize(model)
    n_params, table = summary.total_params, format_summary(summary)
    model_name = ctx.choices.get("model", type(model).__name__)
    log.info(
        "%s: %d parameters, %.2f M MACs per image, on %s; %d train / %d val / %d test images\n%s",
        model_name,
        n_params,
        summary.macs / 1e6,
        device,
        len(train_idx),
        len(val_idx),
        len(data.test_labels),
        table,
    )

    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = ctx.output_dir / "model_summary.txt"
    summary_path.write_text(table + "\n")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_path = ctx.output_dir / "config.yaml"
    OmegaConf.save(resolved, config_path)
    originals, draws, description = augmentation_preview(
        cfg, data.train_images, data.train_labels, train_idx
    )
    preview_path = plots.plot_augmented_inputs(
        originals, draws, ctx.output_dir / "augmented_inputs.png", description
    )
    tags = tracking.run_tags(cfg.seed, device, ctx.overrides, model_name)
    tags["output_dir"] = str(ctx.output_dir)
    tags.update(ctx.extra_tags)
    # Parallel jobs share the cores: their timings only compare with the thread count.
    tags["torch.num_threads"] = str(torch.get_num_threads())
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id
    run_name = cfg.logger.run_name or ctx.run_name
    checkpoint_dir = ctx.output_dir / "checkpoints"

    resume_run_id = resume_state["mlflow_run_id"] if resume_state else None
    with tracking.mlflow_run(
        uri, cfg.logger.experiment, run_name, tags, flatten(cfg), resume_run_id
    ) as run:
        if not resume_state:
            tracking.log_metrics({"params_count": n_params, "macs_per_image": summary.macs})
        with _epoch_logger(cfg, ctx.output_dir, model, draws) as log_metrics:
            with _explain_nondeterminism():
                result = fit(
                    torch.compile(model) if cfg.trainer.compile else model,
                    optimizer,
                    schedule,
                    data,
                    train_idx,
                    val_idx,
                    cfg.trainer,
                    augment,
                    generator(cfg.seed, "shuffle"),
                    device,
                    checkpoint_dir,
                    {"config": resolved, "mlflow_run_id": run.info.run_id},
                    log_metrics,
                    resume_state,
                )
            best = load_checkpoint(checkpoint_dir / "best.pt", map_location=device)
            model.load_state_dict(best["model"])
            tracking.set_tags({"best.weights_sha256": state_dict_sha256(best["model"])})
            test_start = time.perf_counter()
            test = evaluate(
                model,
                data.test_images,
                data.test_labels,
                cfg.trainer.eval_batch_size,
                device,
                cfg.trainer.precision,
            )
            final = {
                "test/acc": test.accuracy,
                "test/loss": test.loss,
                "test/eval_time_s": time.perf_counter() - test_start,
                "best/val_acc": result.best_val_acc,
                "best/epoch": result.best_epoch,
                "train_time_s": result.train_time_s,
            }
            log_metrics(final, len(result.history))
        artifacts = _write_reports(ctx.output_dir, data, test, result.history)
        files = [config_path, summary_path, preview_path, *artifacts]
        folders = [ctx.output_dir / ".hydra", ctx.output_dir / "tensorboard"]
        try:
            tracking.log_artifacts([*files, *filter(Path.is_dir, folders)])
            tracking.log_artifacts([checkpoint_dir / "best.pt"], artifact_path="checkpoints")
            if cfg.logger.log_model:
                example = normalize(to_unit_float(data.test_images[:4])).cpu()
                tracking.log_pytorch_model(copy.deepcopy(model).cpu(), example)
        except Exception as e:
            raise tracking.TrackingError(
                f"uploading artifacts to {uri} failed ({e}); the checkpoints and reports "
                f"are kept in {ctx.output_dir}"
            ) from e
        log.info(
            "Best epoch %d: val acc %.4f, test acc %.4f. MLflow run %s in %s",
            result.best_epoch,
            result.best_val_acc,
            test.accuracy,
            run.info.run_id,
            uri,
        )
    return {**final, "run_id": run.info.run_id, "params_count": n_params}


@contextmanager
def _epoch_logger(
    cfg: DictConfig, output_dir: Path, model: torch.nn.Module, draws: torch.Tensor
) -> Iterator[Callable[[dict[str, float], int], None]]:
    """Where metrics go: MLflow, and TensorBoard too with logger.tensorboard=true (which
    also gets the augmented inputs once and weight histograms every epoch)."""
    if not cfg.logger.tensorboard:
        yield tracking.log_metrics
        return
    from mnist.tensorboard import TensorBoardLog

    board = TensorBoardLog(output_dir / "tensorboard", model)
    board.log_images("inputs/augmented", draws.reshape(-1, 1, 28, 28))

    def log_both(metrics: dict[str, float], step: int) -> None:
        tracking.log_metrics(metrics, step)
        board.log_metrics(metrics, step)

    try:
        yield log_both
    finally:
        board.close()


@contextmanager
def _explain_nondeterminism() -> Iterator[None]:
    """torch.use_deterministic_algorithms raises deep inside an op; say what to do."""
    try:
        yield
    except RuntimeError as e:
        if "deterministic" not in str(e):
            raise
        raise ConfigError(
            f"trainer.deterministic=true, but an operation has no deterministic kernel on "
            f"this device: {str(e).splitlines()[0]} Set trainer.deterministic=false, or use "
            "another model or device."
        ) from e


def write_test_reports(
    output_dir: Path, images: torch.Tensor, labels: torch.Tensor, result: Evaluation, grid: int
) -> tuple[dict[str, Any], str, list[Path]]:
    """The reports of a test-set evaluation, as written by training runs and
    scripts/evaluate.py alike: the per-class table, the confusion matrix and up to `grid`
    misclassified digits with their probabilities. Returns (report, its text table, files)."""
    matrix = confusion_matrix(result.predictions, labels)
    report = classification_report(matrix)
    table = format_report(report)
    report_path = output_dir / "classification_report.txt"
    report_path.write_text(table)
    paths = [report_path, plots.plot_confusion_matrix(matrix, output_dir / "confusion_matrix.png")]
    wrong = plots.plot_misclassified(
        images, labels, result.predictions, result.probabilities,
        output_dir / "misclassified.png", grid,
    )  # fmt: skip
    if wrong:
        paths.append(wrong)
    return report, table, paths


def _write_reports(output_dir: Path, data, test: Evaluation, history) -> list[Path]:
    _, _, paths = write_test_reports(
        output_dir, data.test_images, data.test_labels, test, SAMPLE_GRID_SIZE
    )
    n = min(SAMPLE_GRID_SIZE, len(data.test_labels))
    return [
        *paths,
        plots.plot_training_curves(history, output_dir / "training_curves.png"),
        plots.plot_predictions(
            data.test_images[:n].float() / 255,
            data.test_labels[:n],
            test.predictions[:n],
            test.probabilities[:n],
            output_dir / "sample_predictions.png",
            title="first test digits",
        ),
    ]
