"""This project's input pipeline against the classic torchvision one (mnist/tools/classic.py),
in one process, with the same model, initial weights, optimizer, image order and training
step, so that the difference in images per second is the pipeline's."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from mnist.config import flatten, run_settings, validate_config
from mnist.data.augment import BatchAugment
from mnist.data.batches import training_batches
from mnist.data.tensors import MnistTensors
from mnist.errors import ConfigError
from mnist.seeding import generator
from mnist.tools import classic
from mnist.tracking import runs, store
from mnist.training.build import RunSettings, Setup, build_learner, initial_model, set_up
from mnist.training.device import synchronize
from mnist.training.evaluation import evaluate
from mnist.training.loop import train_step
from mnist.training.resume import Learner
from mnist.training.settings import Trainer


@dataclass
class PipelineResult:
    name: str
    train_img_s: float
    time_to_target_s: float | None
    eval_img_s: float
    peak_rss_mb: float


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**2 if sys.platform == "darwin" else 1024)


def project_batches(
    data: MnistTensors, train_idx: Tensor, batch_size: int, augment: BatchAugment, seed: int
) -> classic.Batches:
    shuffle = generator(seed, "shuffle")
    while True:
        yield from training_batches(
            data.train_images, data.train_labels, train_idx, batch_size, shuffle, augment
        )


def _train(
    learner: Learner, batches: classic.Batches, trainer: Trainer, device: torch.device,
    bench: DictConfig, val: tuple[Tensor, Tensor],
) -> tuple[float, float | None]:  # fmt: skip
    """(images/s, time to target) of the training loop's own step: the wait for the batch and
    the step's work count, not the validation that detects the target."""
    learner.model.train()
    seconds, time_to_target = 0.0, None
    for step in range(1, bench.steps + 1):
        start = time.perf_counter()
        images, labels = next(batches)
        train_step(learner, images, labels, trainer, device)
        synchronize(device)
        seconds += time.perf_counter() - start
        target = bench.target_acc
        if target is not None and time_to_target is None and step % bench.eval_every == 0:
            accuracy = evaluate(
                learner.model, *val, trainer.eval_batch_size, device, trainer.precision
            ).accuracy
            learner.model.train()
            if accuracy >= target:
                time_to_target = seconds
    return bench.steps * trainer.batch_size / seconds, time_to_target


def _steps_settings(cfg: DictConfig, **trainer: bool) -> RunSettings:
    """One "epoch" (the span of onecycle and cosine schedules) of the benchmark's steps."""
    settings = run_settings(cfg)
    return replace(settings, trainer=replace(settings.trainer, epochs=1, **trainer))


def set_up_benchmark(cfg: DictConfig) -> Setup:
    return set_up(_steps_settings(cfg), train_size=cfg.benchmark.steps * cfg.trainer.batch_size)


def run_benchmark(cfg: DictConfig, setup: Setup) -> list[PipelineResult]:
    """Both pipelines, the project's first (so that the peak memory it reports is its own)."""
    bench, data, device = cfg.benchmark, setup.data, setup.device
    val = data.train_images[setup.val_idx], data.train_labels[setup.val_idx]
    settings = _steps_settings(cfg, channels_last=bench.classic_channels_last)
    trainer = settings.trainer
    batches = project_batches(
        data, setup.train_idx, trainer.batch_size, setup.learner.augment, cfg.seed
    )
    trained = _train(setup.learner, batches, trainer, device, bench, val)
    synchronize(device)
    start = time.perf_counter()
    evaluate(
        setup.learner.model, data.test_images, data.test_labels, trainer.eval_batch_size, device,
        trainer.precision,
    )  # fmt: skip
    eval_img_s = len(data.test_labels) / (time.perf_counter() - start)
    results = [PipelineResult("project", *trained, eval_img_s, peak_rss_mb())]
    # Same architecture and initial weights; the memory layout is the classic settings'.
    learner = build_learner(
        settings, initial_model(settings, device), device, bench.steps * trainer.batch_size
    )
    orders = classic.epoch_orders(setup.train_idx, trainer.batch_size, cfg.seed)
    batches = classic.classic_batches(
        cfg.data.root, learner.augment, orders, trainer.batch_size, bench.classic_workers, device
    )
    trained = _train(learner, batches, trainer, device, bench, val)
    eval_img_s = classic.classic_eval_img_s(
        learner.model, cfg.data.root, bench.classic_eval_batch_size, device, trainer.precision
    )
    return [*results, PipelineResult("classic", *trained, eval_img_s, peak_rss_mb())]


def benchmark(cfg: DictConfig, output_dir: Path) -> list[PipelineResult]:
    """Validate, time both pipelines, then write the Markdown table and log it to MLflow."""
    validate_config(cfg)
    if cfg.scheduler.name in ("step", "plateau"):
        raise ConfigError(
            f"the benchmark counts steps, not epochs, so scheduler={cfg.scheduler.name} "
            "(stepped once per epoch) would never step; use scheduler=none, onecycle or cosine"
        )
    augment = BatchAugment.from_config(run_settings(cfg).augmentation, None)
    classic.classic_transform(augment)  # an op without a twin is refused before anything is written
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    store.check_store(uri, experiment=cfg.logger.experiment)
    setup = set_up_benchmark(cfg)
    project, classic_result = results = run_benchmark(cfg, setup)
    tags = runs.run_tags(cfg.seed, setup.device, [], cfg.model._target_)
    target = cfg.benchmark.target_acc
    lines = [
        f"model={cfg.model._target_.rsplit('.', 1)[-1]}, augmentation={augment.name}, "
        f"batch {cfg.trainer.batch_size}, {cfg.benchmark.steps} steps, device {setup.device} "
        f"({tags['device.name']}, {torch.get_num_threads()} threads)\n",
        f"| pipeline | train img/s | eval img/s | "
        f"{f'time to val acc {target:g} (s)' if target else 'time to target (s)'} | "
        "peak RSS so far (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        seconds = "not reached" if r.time_to_target_s is None else f"{r.time_to_target_s:.1f}"
        lines.append(
            f"| {r.name} | {r.train_img_s:,.0f} | {r.eval_img_s:,.0f} | "
            f"{seconds if target else 'n/a'} | {r.peak_rss_mb:,.0f} |"
        )
    speedup = project.train_img_s / classic_result.train_img_s
    lines.append(f"| speed-up (project / classic) | {speedup:.1f}x | "
                 f"{project.eval_img_s / classic_result.eval_img_s:.1f}x | | |")  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "benchmark.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    metrics = {f"{r.name}/{key}": value for r in results for key, value in asdict(r).items()
               if key != "name" and value is not None}  # fmt: skip
    metrics["speedup/train"] = speedup
    runs.log_run(uri, cfg.logger.experiment, "benchmark", tags, flatten(cfg), metrics, [path],
                 "the benchmark")  # fmt: skip
    return results
