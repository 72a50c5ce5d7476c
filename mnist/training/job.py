"""One training job, start to finish: validate the config, prepare data and model, train
inside an MLflow run, then test the best-validation checkpoint and log the reports. Only
the scripts import this module (scripts/tune.py hands it to mnist/tuning as a callable);
what other commands share lives in the stages."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mnist.config import validate_config
from mnist.context import JobContext
from mnist.data.augment import BatchAugment, augmentation_name
from mnist.data.batches import normalize, to_unit_float
from mnist.data.fetch import ensure_mnist
from mnist.data.tensors import MnistTensors, load_mnist, prepare_split
from mnist.errors import CheckpointWriteError, ConfigError, RunFailed, TrainingInterrupted
from mnist.job_dir import continue_log_in
from mnist.models import ModelSummary, format_summary, summarize
from mnist.models.describe import shape_tags
from mnist.reporting import plots
from mnist.reporting.reports import write_training_reports
from mnist.seeding import generator, seed_everything
from mnist.sweeps import resume as sweep_resume
from mnist.tracking import runs, store, ui
from mnist.tracking.config_hash import CONFIG_HASH_TAG, config_sha256
from mnist.tracking.datasets import log_datasets
from mnist.tracking.params import run_params
from mnist.training.build import build_learner, initial_model
from mnist.training.checkpoint import claimed, load_checkpoint, state_dict_sha256
from mnist.training.device import configure_torch, resolve_device, synchronize, torch_settings
from mnist.training.evaluation import Evaluation, evaluate
from mnist.training.loop import Checkpoints, FitResult, MetricsLogger, fit
from mnist.training.phases import PhaseClock
from mnist.training.resume import (
    ignored_overrides,
    load_resume_checkpoint,
    refuse_finished_run,
    resume_checkpoint_path,
    resume_config,
)
from mnist.training.signals import stop_on_signals

log = logging.getLogger(__name__)

# The augmentation preview: random draws of the augmentation per digit.
PREVIEW_DRAWS = 7


def run_training(cfg: DictConfig, ctx: JobContext) -> dict[str, Any]:
    """Returns the final metrics. Raises ConfigError, DataError or TrackingError before any
    side effect in mlruns/ when the config, the data or the store cannot work,
    TrainingInterrupted on SIGINT/SIGTERM at any time until the MLflow run is closed, and
    CheckpointWriteError or RunFailed when a disk or the store fails. In a resumed sweep, a
    job that already finished returns its run's metrics without training."""
    cfg, done = sweep_resume.resume_job(cfg, ctx)
    if done is not None:
        return done
    clock = PhaseClock()
    with _claimed_run(cfg, ctx) as (cfg, uri, resume_state), _failures_explained(uri, ctx):
        return _train(cfg, ctx, uri, resume_state, clock)


def _train(
    cfg: DictConfig,
    ctx: JobContext,
    uri: str,
    resume_state: dict[str, Any] | None,
    clock: PhaseClock,
) -> dict[str, Any]:
    """The stages of a run in order, readable top to bottom, each ending in a lap of the
    clock; over 60 lines because the steps that close the run are interleaved with the
    points where a signal stops it."""
    # An augmentation is named by what it applies, not by the option(s) it came from
    # (`augmentation=[shift_rotate,erase]` has no single one): in the params and run names.
    choices = {**ctx.choices, "augmentation": augmentation_name(cfg.augmentation)}
    ctx = dataclasses.replace(ctx, choices=choices)
    device = resolve_device(cfg.device.name)
    configure_torch(device, cfg.device, cfg.trainer.deterministic)
    seed_everything(cfg.seed)

    data_root = ensure_mnist(cfg.data.root, verify=cfg.data.verify_checksums)
    data = load_mnist(data_root, device)
    train_idx, val_idx = prepare_split(cfg, data.train_labels)
    clock.lap("data")
    model = initial_model(cfg, device)
    learner = build_learner(cfg, model, device, len(train_idx))
    summary = summarize(model)
    model_name = ctx.choices.get("model", type(model).__name__)
    log.info(
        "%s: %d parameters, %.2f M MACs per image, on %s; %d train / %d val / %d test images%s",
        model_name, summary.total_params, summary.macs / 1e6, device, len(train_idx),
        len(val_idx), len(data.test_labels),
        # Once per sweep: every run logs its own model_summary.txt.
        "\n" + format_summary(summary) if ctx.job_num == 0 else "",
    )  # fmt: skip

    clock.lap("model")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    files, draws = _write_run_files(cfg, ctx.output_dir, resolved, summary, data, train_idx)
    clock.lap("preview")
    checkpoint_dir = ctx.output_dir / "checkpoints"

    # From the run's start to its end, a signal stops the job where that is safe (the loop
    # checks after each step, the rest below between its steps), so that the run ends
    # KILLED with a last.pt that a resume finishes from.
    with stop_on_signals() as stop_requested, runs.mlflow_run(
        uri, cfg.logger.experiment, cfg.logger.run_name or ctx.run_name,
        _tags(cfg, ctx, device, model_name) | shape_tags(model), run_params(cfg, ctx.choices),
        resume_state["mlflow_run_id"] if resume_state else None,
        experiment_tags=ui.experiment_tags, system_metrics=cfg.logger.system_metrics,
    ) as run:  # fmt: skip

        def stop_if_requested() -> None:
            if stop_requested():
                raise TrainingInterrupted(checkpoint_dir / "last.pt")

        if not resume_state:
            runs.log_metrics({"params_count": summary.total_params, "macs_per_image": summary.macs})
            sweep_resume.mark_superseded(uri, ctx, run.info.run_id)
            sizes = {"training": len(train_idx), "validation": len(val_idx),
                     "test": len(data.test_labels)}  # fmt: skip
            log_datasets(data_root, cfg.data, cfg.seed, sizes)
            runs.log_artifacts(files)  # the config first: a run that fails keeps it
        clock.lap("mlflow_setup")
        with _epoch_logger(cfg, ctx.output_dir, model, draws, resume_state) as log_metrics:
            with _explain_nondeterminism():
                checkpoints = Checkpoints(
                    checkpoint_dir, {"config": resolved, "mlflow_run_id": run.info.run_id}
                )
                result = fit(
                    learner, data, train_idx, val_idx, cfg.trainer, device, checkpoints,
                    _observed(log_metrics, ctx.epoch_observer), resume_state,
                )  # fmt: skip
            clock.lap("training")
            stop_if_requested()
            test, final = _test_best_checkpoint(cfg, model, data, device, checkpoint_dir, result)
            clock.lap("evaluation")
            if cfg.logger.log_model:
                # Before the final metrics: logged at its step, they describe it.
                _log_model(cfg, model, model_name, data.test_images, len(result.history))
                clock.lap("model_logging")
            log_metrics(final, len(result.history))
        stop_if_requested()
        reports = write_training_reports(
            ctx.output_dir, data.test_images, data.test_labels, test, result.history
        )
        stop_if_requested()
        folders = [ctx.output_dir / ".hydra", ctx.output_dir / "tensorboard"]
        runs.log_artifacts([*reports, *filter(Path.is_dir, folders)])
        runs.log_artifacts([checkpoint_dir / "best.pt"], artifact_path="checkpoints")
        clock.lap("reports")
        if not resume_state:  # a resumed run's phases are not a start's
            runs.log_metrics(clock.metrics())
        stop_if_requested()
        log.info(
            "Best epoch %d: val acc %.4f, test acc %.4f. MLflow run %s in %s",
            result.best_epoch, result.best_val_acc, test.accuracy, run.info.run_id, uri,
        )  # fmt: skip
    return {**final, "run_id": run.info.run_id, "params_count": summary.total_params}


@contextmanager
def _claimed_run(
    cfg: DictConfig, ctx: JobContext
) -> Iterator[tuple[DictConfig, str, dict[str, Any] | None]]:
    """(the config to run, the store URI, the last.pt state to resume from or None), with
    the run's checkpoint directory held by this job until the block ends. A resumed run
    continues with its own config, in its own output directory and log; it is refused
    when it is FINISHED or another job holds it."""
    validate_config(cfg)
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    if not cfg.trainer.resume:
        store.check_store(uri)
        with claimed(ctx.output_dir / "checkpoints"):
            yield cfg, uri, None
        return
    checkpoint_path = resume_checkpoint_path(cfg.trainer.resume, uri)
    with claimed(checkpoint_path.parent):
        resume_state = load_resume_checkpoint(cfg.trainer.resume, checkpoint_path)
        resumed = resume_config(resume_state, checkpoint_path, cfg.device)
        uri = store.tracking_uri(resumed.logger.tracking_uri, resumed.paths.mlruns)
        store.check_store(uri)
        refuse_finished_run(cfg.trainer.resume, resume_state["mlflow_run_id"], uri)
        ctx.output_dir = checkpoint_path.parent.parent
        continue_log_in(ctx.output_dir, cfg.paths.outputs)
        log.info("Resuming %s with the run's own config", checkpoint_path)
        if ignored := ignored_overrides(cfg, resumed, ctx.overrides):
            log.warning("Ignored (the resumed run keeps its own config): %s", " ".join(ignored))
        yield resumed, uri, resume_state


def _write_run_files(
    cfg: DictConfig,
    output_dir: Path,
    resolved: dict[str, Any],
    summary: ModelSummary,
    data: MnistTensors,
    train_idx: torch.Tensor,
) -> tuple[list[Path], torch.Tensor]:
    """The run's resolved config, model summary and augmentation preview; returns the
    files and the augmented draws (TensorBoard shows them too)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "config.yaml"
    OmegaConf.save(resolved, config_path)
    summary_path = output_dir / "model_summary.txt"
    summary_path.write_text(format_summary(summary) + "\n")
    originals, draws, description = augmentation_preview(
        cfg, data.train_images, data.train_labels, train_idx
    )
    preview = plots.plot_augmented_inputs(
        originals, draws, output_dir / "augmented_inputs.png", description
    )
    return [config_path, summary_path, preview], draws


def _test_best_checkpoint(
    cfg: DictConfig,
    model: torch.nn.Module,
    data: MnistTensors,
    device: torch.device,
    checkpoint_dir: Path,
    result: FitResult,
) -> tuple[Evaluation, dict[str, float]]:
    """The best-validation weights on the test set (the only time a run looks at it,
    unless trainer.test_every_epoch), and the run's final metrics."""
    best = load_checkpoint(checkpoint_dir / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    runs.set_tags({"best.weights_sha256": state_dict_sha256(best["model"])})
    synchronize(device)  # evaluate() ends in .item(), which waits for its own work
    test_start = time.perf_counter()
    test = evaluate(
        model, data.test_images, data.test_labels, cfg.trainer.eval_batch_size, device,
        cfg.trainer.precision,
    )  # fmt: skip
    return test, {
        "test/acc": test.accuracy,
        "test/loss": test.loss,
        "test/eval_time_s": time.perf_counter() - test_start,
        "best/val_acc": result.best_val_acc,
        "best/epoch": result.best_epoch,
        "train_time_s": result.train_time_s,
    }


def _tags(cfg: DictConfig, ctx: JobContext, device: torch.device, model: str) -> dict[str, str]:
    tags = runs.run_tags(cfg.seed, device, ctx.overrides, model)
    tags["output_dir"] = str(ctx.output_dir)
    tags[CONFIG_HASH_TAG] = config_sha256(cfg)
    tags.update(ctx.extra_tags)
    tags.update(torch_settings())
    if ctx.parent_run_id:
        tags[store.PARENT_TAG] = ctx.parent_run_id
    return tags


@contextmanager
def _failures_explained(uri: str, ctx: JobContext) -> Iterator[None]:
    """A run that a disk or its store stopped ends in one line: what failed, where the
    run's files are, and how to go on: the command that resumes the run where it has a
    last.pt, else the same command again. Where the store could record it, the run is
    FAILED (runs.mlflow_run); a server that is gone leaves it RUNNING until it resumes."""
    try:
        yield
    except CheckpointWriteError as e:
        raise CheckpointWriteError(f"{e}; {_how_to_go_on(ctx.output_dir)}") from e
    except Exception as e:
        if (failure := _failure(e, uri)) is None:
            raise
        raise RunFailed(
            f"{failure}; the run's files are kept in {ctx.output_dir}; "
            f"{_how_to_go_on(ctx.output_dir)}"
        ) from e


def _failure(error: Exception, uri: str) -> str | None:
    """What a failed store or disk says, in a line; None for any other exception (a bug
    keeps its traceback). Its root cause names it best: MLflow wraps a refused connection
    in four exceptions, a full SQLite disk in three."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException | OSError):
        return None
    cause: BaseException = error
    while (inner := cause.__cause__ or cause.__context__) is not None:
        cause = inner
    if isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror
        if path := cause.filename2 or cause.filename:
            reason += f": {path}"
    else:
        reason = (str(cause).strip() or type(cause).__name__).splitlines()[0]
    if isinstance(error, MlflowException):
        return f"the MLflow store {uri} failed during the run ({reason})"
    return f"the run stopped on an I/O error ({reason})"


def _how_to_go_on(output_dir: Path) -> str:
    last = output_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return f"once that is fixed, resume the run: python scripts/train.py trainer.resume={last}"
    return "once that is fixed, run the same command again (the run has no last.pt to resume from)"


def _log_model(
    cfg: DictConfig, model: torch.nn.Module, name: str, test_images: torch.Tensor, step: int
) -> None:
    """The best-validation model in MLflow (logger.register: also a registered version)."""
    example = normalize(to_unit_float(test_images[:4])).cpu()
    runs.log_pytorch_model(copy.deepcopy(model).cpu(), example, name, cfg.logger.register, step)


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
    description = f"augmentation={augment.name}: {augment.describe()}"
    return originals[:, 0], draws.view(len(originals), PREVIEW_DRAWS, 28, 28), description


@contextmanager
def _epoch_logger(
    cfg: DictConfig,
    output_dir: Path,
    model: torch.nn.Module,
    draws: torch.Tensor,
    resume_state: dict[str, Any] | None,
) -> Iterator[MetricsLogger]:
    """Where metrics go: MLflow, and TensorBoard too with logger.tensorboard=true (which
    also gets the augmented inputs once and weight histograms every epoch). A resumed run
    logs each metric once per step: what it redoes after its last checkpoint (an epoch, the
    final metrics) the interrupted process may have logged already."""
    logged = runs.logged_steps() if resume_state else set()

    def log_new(sink: MetricsLogger) -> MetricsLogger:
        def log_once(metrics: dict[str, float], step: int) -> None:
            if new := {k: v for k, v in metrics.items() if (k, step) not in logged}:
                sink(new, step)

        return log_once

    if not cfg.logger.tensorboard:
        yield log_new(runs.log_metrics)
        return
    from mnist.tracking.tensorboard import TensorBoardLog

    board = TensorBoardLog(output_dir / "tensorboard", model)
    board.log_images("inputs/augmented", draws.reshape(-1, 1, 28, 28))

    def log_both(metrics: dict[str, float], step: int) -> None:
        runs.log_metrics(metrics, step)
        board.log_metrics(metrics, step)

    try:
        yield log_new(log_both)
    finally:
        board.close()


def _observed(log_metrics: MetricsLogger, observer: MetricsLogger | None) -> MetricsLogger:
    """Each epoch's metrics logged, then shown to the job's observer (JobContext)."""
    if observer is None:
        return log_metrics

    def log_and_observe(metrics: dict[str, float], epoch: int) -> None:
        log_metrics(metrics, epoch)
        observer(metrics, epoch)

    return log_and_observe


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
