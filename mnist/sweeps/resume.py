"""sweep.resume=true: a job, known by its config.sha256, is not re-run when FINISHED, continued
from its last.pt when interrupted, else run anew superseding the old run."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mnist.context import JobContext
from mnist.overrides import override_key, task_overrides
from mnist.redact import redact
from mnist.tracking import store, sweep_runs
from mnist.tracking.sweep_runs import SUPERSEDES_TAG, current_runs, job_runs

log = logging.getLogger(__name__)


def sweep_sha256(config: DictConfig) -> str:
    """Less where-to-write keys and the launcher's settings: a sweep stopped under one launcher
    resumes under another."""
    excluded = set(config.hydra.job.config.override_dirname.exclude_keys)
    kept = []
    for override in task_overrides(config.hydra):
        key = override_key(override)
        if key not in excluded and not key.startswith(("hydra/launcher", "hydra.launcher.")):
            kept.append(override)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    kept += [f"{key}={value}" for key, value in params.items()]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def resume_job(cfg: DictConfig, ctx: JobContext) -> tuple[DictConfig, dict[str, Any] | None]:
    """(the config to run, None), or (cfg, the final metrics) of a job already FINISHED; ctx
    names the runs a job run anew supersedes."""
    if not (ctx.parent_run_id and OmegaConf.select(cfg, "sweep.resume") is True):
        return cfg, None
    from mnist.tracking.params import config_sha256  # imports torch

    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    earlier = current_runs(job_runs(uri, ctx.parent_run_id, config_sha256(cfg)))[::-1]
    if not earlier:
        return cfg, None
    if run := next((run for run in earlier if run.info.status == "FINISHED"), None):
        log.info(
            "Done in an earlier attempt of this sweep: run %s FINISHED (val acc %.4f, test "
            "acc %.4f); not re-run", run.info.run_id,
            run.data.metrics.get("best/val_acc", float("nan")),
            run.data.metrics.get("test/acc", float("nan")),
        )  # fmt: skip
        return cfg, {**run.data.metrics, "run_id": run.info.run_id}
    latest = earlier[0]
    output_dir = latest.data.tags.get("output_dir")
    if output_dir and (Path(output_dir) / "checkpoints" / "last.pt").is_file():
        log.info("Run %s was %s: resuming it from its last.pt", latest.info.run_id,
                 latest.info.status)  # fmt: skip
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.trainer.resume = latest.info.run_id
        return cfg, None
    ctx.extra_tags[SUPERSEDES_TAG] = ",".join(run.info.run_id for run in earlier)
    log.info("Run %s was %s without a last.pt: training the job again as a new run",
             latest.info.run_id, latest.info.status)  # fmt: skip
    return cfg, None


def record_failed_job(cfg: DictConfig, error: BaseException) -> None:
    """A FAILED child run saying why a job failed before its own run opened."""
    from mnist.tracking.params import CONFIG_HASH_TAG, config_sha256

    ctx = JobContext.from_hydra()
    if (parent := ctx.parent_run_id) is None:
        return
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    config_hash = config_sha256(cfg)
    if current_runs(job_runs(uri, parent, config_hash)):
        return
    # MLflow keeps tag values of up to 8000 characters.
    message = redact(f"{type(error).__name__}: {error}")[:4000]
    tags = {"model": ctx.choices.get("model", "n/a"), "seed": str(cfg.seed),
            "hydra.overrides": " ".join(ctx.overrides), CONFIG_HASH_TAG: config_hash}  # fmt: skip
    name = cfg.logger.run_name or ctx.run_name
    run_id = sweep_runs.record_failed_job(uri, parent, name, tags, message)
    log.error("Job %d failed before its MLflow run opened; recorded as FAILED run %s: %s",
              ctx.job_num, run_id, message)  # fmt: skip
