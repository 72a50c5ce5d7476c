"""A job of a sweep that failed before its own MLflow run opened, as a FAILED run of the
sweep saying why: otherwise the sweep's runs would look like all of it, and the reason
would be on the screen only. Imports nothing of the entry points: mnist/cli.py records a
job refused as it starts with it, the sweep's callback a job that crashed."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from mnist.context import JobContext, parent_run_id
from mnist.redact import redact
from mnist.sweeps.runs import current_runs
from mnist.tracking import store
from mnist.tracking.parent import children
from mnist.tracking.store import PARENT_TAG

log = logging.getLogger(__name__)

# MLflow keeps tag values of up to 8000 characters.
MAX_ERROR = 4000


def record_failed_job(cfg: DictConfig, error: BaseException) -> None:
    """A FAILED child run whose description (what MLflow's UI shows on the run's page) is
    the error of a job that failed before its own run opened: a crash while it set up (the
    sweep's callback), or a refusal as it started, which ends the sweep (mnist/cli.py). A
    job with a run in the sweep (its config's hash, as a resumed sweep finds it) needs
    none: that run ended FAILED itself."""
    from hydra.core.hydra_config import HydraConfig
    from mlflow.tracking import MlflowClient

    from mnist.tracking.params import CONFIG_HASH_TAG, config_sha256

    parent = parent_run_id(HydraConfig.get())
    if parent is None:
        return
    client = MlflowClient(store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns))
    experiment_id = client.get_run(parent).info.experiment_id
    config_hash = config_sha256(cfg)
    own = f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'"
    if current_runs(children(client, experiment_id, parent, own)):
        return
    ctx = JobContext.from_hydra()
    message = redact(f"{type(error).__name__}: {error}")[:MAX_ERROR]
    tags = {
        PARENT_TAG: parent,
        "model": ctx.choices.get("model", "n/a"),
        "seed": str(cfg.seed),
        "hydra.overrides": " ".join(ctx.overrides),
        CONFIG_HASH_TAG: config_hash,
        "error": message,
        "mlflow.note.content": f"Failed before its MLflow run opened: {message}",
    }
    name = cfg.logger.run_name or ctx.run_name
    run_id = store.retry_when_locked(
        lambda: client.create_run(experiment_id, run_name=name, tags=tags)
    ).info.run_id
    store.retry_when_locked(lambda: client.set_terminated(run_id, "FAILED"))
    log.error("Job %d failed before its MLflow run opened; recorded as FAILED run %s: %s",
              ctx.job_num, run_id, message)  # fmt: skip
