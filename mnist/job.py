"""One training job: validate the config, train with the core (mnist/training) inside an
MLflow run (mnist/tracking/listener.py), test the best-validation checkpoint, write reports."""

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mnist.config import run_settings, validate_config
from mnist.context import JobContext
from mnist.data.augment import BatchAugment
from mnist.data.batches import to_unit_float
from mnist.errors import CheckpointWriteError, ConfigError, RunFailed, TrainingInterrupted
from mnist.job_dir import continue_log_in
from mnist.models import format_summary, summarize
from mnist.reporting import plots
from mnist.reporting.reports import write_training_reports
from mnist.resume import (
    ignored_overrides,
    load_resume_checkpoint,
    resume_checkpoint_path,
    resume_config,
)
from mnist.seeding import generator
from mnist.sweeps import resume as sweep_resume
from mnist.tracking import store, sweep_runs
from mnist.tracking.listener import (
    RunStart,
    refuse_finished_run,
    store_failure,
    training_run,
)
from mnist.training.build import RunSettings, Setup, set_up
from mnist.training.checkpoint import claimed
from mnist.training.loop import Checkpoints, fit, test_best
from mnist.training.phases import PhaseClock
from mnist.training.signals import stop_on_signals

log = logging.getLogger(__name__)

PREVIEW_DRAWS = 7  # random draws of the augmentation per digit in its preview


def run_training(cfg: DictConfig, ctx: JobContext) -> dict[str, Any]:
    """The final metrics. ConfigError, DataError or TrackingError before any side effect in
    mlruns/; TrainingInterrupted on SIGINT/SIGTERM until the run is closed; CheckpointWriteError
    or RunFailed when a disk or the store fails. In a resumed sweep, a job that already
    finished returns its run's metrics without training."""
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
    """The stages of a run in order, each ending in a lap of the clock."""
    settings = run_settings(cfg)
    # Named by what it applies: `augmentation=[shift_rotate,erase]` has no single option.
    augmentation = BatchAugment.from_config(settings.augmentation, None).name
    ctx = dataclasses.replace(ctx, choices={**ctx.choices, "augmentation": augmentation})
    setup = set_up(settings, lap=clock.lap)
    start, resolved = _run_start(cfg, settings, ctx, setup, clock)
    checkpoint_dir = ctx.output_dir / "checkpoints"
    resume_id = resume_state["mlflow_run_id"] if resume_state else None

    # A signal stops the job where that is safe (the loop after each step, below between
    # steps), so that the run ends KILLED with a last.pt that a resume finishes from.
    with stop_on_signals() as stop_requested, training_run(cfg, ctx, uri, start, resume_id) as run:

        def stop_if_requested() -> None:
            if signum := stop_requested():
                raise TrainingInterrupted(checkpoint_dir / "last.pt", signum)

        if not resume_state:
            sweep_runs.mark_superseded(uri, ctx, run.run_id)
        checkpoints = Checkpoints(checkpoint_dir, {"config": resolved, "mlflow_run_id": run.run_id})
        clock.lap("mlflow_setup")
        with _explain_nondeterminism():
            result = fit(
                setup.learner, setup.data, setup.train_idx, setup.val_idx, settings.trainer,
                setup.device, checkpoints, run, resume_state,
            )  # fmt: skip
        clock.lap("training")
        stop_if_requested()
        test, final, weights_sha256 = test_best(
            setup.model, setup.data, checkpoints, result, settings.trainer, setup.device
        )
        clock.lap("evaluation")
        if cfg.logger.log_model:
            run.log_model(setup.data.test_images, len(result.history))
            clock.lap("model_logging")
        run.log_final(final, weights_sha256, len(result.history))
        stop_if_requested()
        reports = write_training_reports(
            ctx.output_dir, setup.data.test_images, setup.data.test_labels, test, result.history
        )
        stop_if_requested()
        run.log_files(reports)
        clock.lap("reports")
        run.log_phases(clock.metrics())
        stop_if_requested()
        log.info(
            "Best epoch %d: val acc %.4f, test acc %.4f. MLflow run %s in %s",
            result.best_epoch, result.best_val_acc, test.accuracy, run.run_id, uri,
        )  # fmt: skip
    return {**final, "run_id": run.run_id, "params_count": start.summary.total_params}


def _run_start(
    cfg: DictConfig, settings: RunSettings, ctx: JobContext, setup: Setup, clock: PhaseClock
) -> tuple[RunStart, dict[str, Any]]:
    """The model described; the run's resolved config, model summary and augmentation
    preview written. Returns what the MLflow run opens with, and the resolved config."""
    model, train_idx, val_idx = setup.model, setup.train_idx, setup.val_idx
    summary = summarize(model)
    model_name = ctx.choices.get("model", type(model).__name__)
    log.info(
        "%s: %d parameters, %.2f M MACs per image, on %s; %d train / %d val / %d test images%s",
        model_name, summary.total_params, summary.macs / 1e6, setup.device, len(train_idx),
        len(val_idx), len(setup.data.test_labels),
        # Once per sweep: every run logs its own model_summary.txt.
        "\n" + format_summary(summary) if ctx.job_num == 0 else "",
    )  # fmt: skip
    clock.lap("model")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    out = ctx.output_dir
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(resolved, out / "config.yaml")
    (out / "model_summary.txt").write_text(format_summary(summary) + "\n")
    originals, draws, description = augmentation_preview(
        settings, setup.data.train_images, setup.data.train_labels, train_idx
    )
    preview = plots.plot_augmented_inputs(
        originals, draws, out / "augmented_inputs.png", description
    )
    clock.lap("preview")
    files = [out / "config.yaml", out / "model_summary.txt", preview]
    return RunStart(setup, model_name, summary, files), resolved


@contextmanager
def _claimed_run(
    cfg: DictConfig, ctx: JobContext
) -> Iterator[tuple[DictConfig, str, dict[str, Any] | None]]:
    """(the config to run, the store URI, the last.pt state to resume or None), the run's
    checkpoint directory held until the block ends. A resumed run continues with its own
    config, directory and log; refused when FINISHED or held by another job."""
    validate_config(cfg)
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    if not cfg.trainer.resume:
        store.check_store(uri, experiment=cfg.logger.experiment)
        with claimed(ctx.output_dir / "checkpoints"):
            yield cfg, uri, None
        return
    checkpoint_path = resume_checkpoint_path(cfg.trainer.resume, uri)
    with claimed(checkpoint_path.parent):
        resume_state = load_resume_checkpoint(cfg.trainer.resume, checkpoint_path)
        resumed = resume_config(resume_state, checkpoint_path, cfg.device)
        uri = store.tracking_uri(resumed.logger.tracking_uri, resumed.paths.mlruns)
        store.check_store(uri, experiment=cfg.logger.experiment)
        refuse_finished_run(cfg.trainer.resume, resume_state["mlflow_run_id"], uri)
        ctx.output_dir = checkpoint_path.parent.parent
        continue_log_in(ctx.output_dir, cfg.paths.outputs)
        log.info("Resuming %s with the run's own config", checkpoint_path)
        if ignored := ignored_overrides(cfg, resumed, ctx.overrides):
            log.warning("Ignored (the resumed run keeps its own config): %s", " ".join(ignored))
        yield resumed, uri, resume_state


@contextmanager
def _failures_explained(uri: str, ctx: JobContext) -> Iterator[None]:
    """A run that a disk or its store stopped ends in one line: what failed, where the run's
    files are, and how to go on."""
    try:
        yield
    except CheckpointWriteError as e:
        raise CheckpointWriteError(f"{e}; {_how_to_go_on(ctx.output_dir)}") from e
    except Exception as e:
        if (failure := store_failure(e, uri)) is None:
            raise
        raise RunFailed(
            f"{failure}; the run's files are kept in {ctx.output_dir}; "
            f"{_how_to_go_on(ctx.output_dir)}"
        ) from e


def _how_to_go_on(output_dir: Path) -> str:
    last = output_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return f"once that is fixed, resume the run: python scripts/train.py trainer.resume={last}"
    return "once that is fixed, run the same command again (the run has no last.pt to resume from)"


def augmentation_preview(
    settings: RunSettings, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(originals (N, 28, 28), augmented draws (N, K, 28, 28), a description) for the first
    training image of each digit, from a generator of its own so that the training stream of
    random numbers is the same whether or not anyone looks."""
    augment = BatchAugment.from_config(
        settings.augmentation, generator(settings.seed, "augment-preview", images.device)
    )
    _, first = np.unique(labels[indices].cpu().numpy(), return_index=True)
    originals = to_unit_float(images[indices[torch.from_numpy(first).to(indices.device)]])
    draws = augment(originals.repeat_interleave(PREVIEW_DRAWS, 0))
    words = augment.describe()
    description = f"augmentation={augment.name}" + (f": {words}" if words else "")
    return originals[:, 0], draws.view(len(originals), PREVIEW_DRAWS, 28, 28), description


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
