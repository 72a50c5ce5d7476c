"""A training job's MLflow run: the core's events as MLflow calls, so adding a metric or a file
to every run is an edit here."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mnist.context import JobContext
from mnist.data.batches import normalize, to_unit_float
from mnist.data.fetch import MNIST_SHA256, sha256_of
from mnist.errors import ConfigError
from mnist.models import ModelSummary
from mnist.models.describe import shape_tags
from mnist.tracking import runs, store, ui
from mnist.tracking.params import CONFIG_HASH_TAG, config_sha256, run_params
from mnist.training.build import Setup
from mnist.training.device import torch_settings
from mnist.training.events import RunListener

log = logging.getLogger(__name__)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class RunStart:
    setup: Setup
    model_name: str
    summary: ModelSummary
    files: list[Path]  # logged first: a run that fails keeps them


class MlflowListener(RunListener):
    """Each metric logged once per step: a resumed run redoes epochs the interrupted process
    may have logged."""

    def __init__(
        self, run_id: str, cfg: DictConfig, ctx: JobContext, start: RunStart, resumed: bool
    ) -> None:
        import mlflow

        self.run_id, self.cfg, self.ctx, self.start, self.resumed = run_id, cfg, ctx, start, resumed
        client = mlflow.MlflowClient()
        self.logged = {
            (name, metric.step)
            for name in (client.get_run(run_id).data.metrics if resumed else ())
            for metric in client.get_metric_history(run_id, name)
        }

    def on_epoch_end(self, metrics: dict[str, float], epoch: int) -> None:
        self.log_metrics(metrics, epoch)
        if self.ctx.epoch_observer is not None:
            self.ctx.epoch_observer(metrics, epoch)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if new := {k: v for k, v in metrics.items() if (k, step) not in self.logged}:
            runs.log_metrics(new, step)

    def log_model(self, test_images: torch.Tensor, step: int) -> None:
        example = normalize(to_unit_float(test_images[:4])).cpu()
        model = copy.deepcopy(self.start.setup.model).cpu()
        runs.log_pytorch_model(model, example, self.start.model_name, self.cfg.logger.register,
                               step)  # fmt: skip

    def log_final(self, metrics: dict[str, float], weights_sha256: str, step: int) -> None:
        runs.set_tags({"best.weights_sha256": weights_sha256})
        self.log_metrics(metrics, step)

    def log_files(self, reports: list[Path]) -> None:
        hydra = [self.ctx.output_dir / ".hydra"]
        runs.log_artifacts([*reports, *filter(Path.is_dir, hydra)])
        best = self.ctx.output_dir / "checkpoints" / "best.pt"
        runs.log_artifacts([best], artifact_path="checkpoints")

    def log_phases(self, seconds: dict[str, float]) -> None:
        if not self.resumed:  # a resumed run's phases are not a start's
            runs.log_metrics(seconds)


def log_datasets(root: Path, data: Any, seed: int, sizes: dict[str, int]) -> None:
    """The run's three sets as MLflow datasets, each identified by its IDX files' SHA-256 and its
    split: runs on the same images show the same one."""
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    files = {
        part: {n: MNIST_SHA256[n] if data.verify_checksums else sha256_of(root / n) for n in names}
        for part, names in SPLIT_FILES.items()
    }
    split = {"split_seed": seed, "val_size": data.val_size, "stratify": data.stratify,
             "train_subset": data.train_subset}  # fmt: skip
    profiles = {
        "training": {"images": sizes["training"], "sha256": files["train"], **split},
        "validation": {"images": sizes["validation"], "sha256": files["train"], **split},
        "test": {"images": sizes["test"], "sha256": files["test"]},
    }
    source = json.dumps({"uri": root.resolve().as_uri()})
    inputs = []
    for context, profile in profiles.items():
        # MLflow's SQL store keeps digests of up to 36 characters.
        digest = hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:16]
        dataset = Dataset(f"mnist-{context}", digest, "local", source, profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    run_id = mlflow.active_run().info.run_id
    store.retry_when_locked(lambda: mlflow.MlflowClient().log_inputs(run_id, datasets=inputs))


@contextmanager
def training_run(
    cfg: DictConfig, ctx: JobContext, uri: str, start: RunStart, resume_id: str | None
) -> Iterator[MlflowListener]:
    """The job's MLflow run until the block ends: a new one logs its params, sizes, datasets
    and first files; `resume_id`'s is continued instead."""
    with runs.mlflow_run(
        uri, cfg.logger.experiment, cfg.logger.run_name or ctx.run_name, _tags(cfg, ctx, start),
        run_params(cfg, ctx.choices), resume_id, experiment_tags=ui.experiment_tags,
        system_metrics=cfg.logger.system_metrics,
    ) as run:  # fmt: skip
        if not resume_id:
            summary, setup = start.summary, start.setup
            runs.log_metrics({"params_count": summary.total_params, "macs_per_image": summary.macs})
            sizes = {"training": len(setup.train_idx), "validation": len(setup.val_idx),
                     "test": len(setup.data.test_labels)}  # fmt: skip
            log_datasets(setup.data_root, cfg.data, cfg.seed, sizes)
            runs.log_artifacts(start.files)
        yield MlflowListener(run.info.run_id, cfg, ctx, start, resumed=bool(resume_id))
        curves = ui.run_path(run.info.experiment_id, run.info.run_id, "model-metrics")
        if hint := ui.how_to_open(uri, curves):
            log.info("Its learning curves: %s", hint)


def _tags(cfg: DictConfig, ctx: JobContext, start: RunStart) -> dict[str, str]:
    tags = runs.run_tags(cfg.seed, start.setup.device, ctx.overrides, start.model_name)
    tags["output_dir"] = str(ctx.output_dir)
    tags[CONFIG_HASH_TAG] = config_sha256(cfg)
    tags.update(ctx.extra_tags)
    tags.update(torch_settings())
    if ctx.parent_run_id:
        tags[store.PARENT_TAG] = ctx.parent_run_id
    return tags | shape_tags(start.setup.model)


def _stored_run(run_id: str, uri: str, missing: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return store.client(uri).get_run(run_id)
    except MlflowException as e:
        raise ConfigError(missing) from e


def checkpoint_of_run(run_id: str, uri: str) -> Path:
    run = _stored_run(run_id, uri, f"trainer.resume={run_id}: no such MLflow run in {uri}")
    output_dir = run.data.tags.get("output_dir")
    checkpoint = Path(output_dir) / "checkpoints" / "last.pt" if output_dir else None
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(
            f"trainer.resume={run_id}: the run's last checkpoint is not on this machine "
            f"({checkpoint or 'no output_dir tag'}); pass its path as trainer.resume"
        )
    return checkpoint


def refuse_finished_run(target: str, run_id: str, uri: str) -> None:
    """Resuming a FINISHED run would log its final metrics and model a second time."""
    missing = f"trainer.resume={target}: the checkpoint's MLflow run {run_id} is not in {uri}"
    if _stored_run(run_id, uri, missing).info.status == "FINISHED":
        raise ConfigError(
            f"trainer.resume={target}: run {run_id} is FINISHED, there is nothing to resume "
            f"(scripts/reproduce.py run_id={run_id} trains it again as a new run)"
        )


def store_failure(error: Exception, uri: str) -> str | None:
    """What a failed store or disk says, in a line; None for any other exception (a bug keeps
    its traceback). The root cause names it best: MLflow wraps it in up to four."""
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
