"""A stopped sweep continued, not started over: the same command with sweep.resume=true.
The sweep's parent run is found by the hash of its command line (SWEEP_HASH_TAG, on every
parent), each job among that parent's children by the hash of its resolved config
(config.sha256, mnist/tracking/params.py): a FINISHED run is done and not re-run, an
interrupted one continues from its last.pt in the same MLflow run (trainer.resume), and
one without a last.pt is restarted as a new run that supersedes it, so that every job
counts once (mnist/sweeps/runs.py: `current_runs`)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mnist.context import JobContext
from mnist.overrides import override_key, task_overrides
from mnist.sweeps.runs import SUPERSEDED_TAG, SUPERSEDES_TAG, current_runs
from mnist.tracking import store
from mnist.tracking.parent import children, reopen_parent

log = logging.getLogger(__name__)

SWEEP_HASH_TAG = "sweep.overrides_sha256"


def sweep_sha256(config: DictConfig) -> str:
    """The sweep's identity: its command-line overrides in order, then the sweeper's params
    (an experiment preset's sweep), without the keys override_dirname leaves out (where
    runs write; sweep.resume) and without the launcher's settings (hydra/launcher=joblib,
    hydra.launcher.n_jobs): a sweep stopped under one launcher resumes under another."""
    excluded = set(config.hydra.job.config.override_dirname.exclude_keys)
    kept = []
    for override in task_overrides(config.hydra):
        key = override_key(override)
        if key not in excluded and not key.startswith(("hydra/launcher", "hydra.launcher.")):
            kept.append(override)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    kept += [f"{key}={value}" for key, value in params.items()]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def reopen_sweep_parent(client: Any, experiment_id: str, sweep_hash: str) -> str | None:
    """The most recent parent run of the same sweep in the experiment, set RUNNING again;
    None (said in one line) when there is none."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`{SWEEP_HASH_TAG}` = '{sweep_hash}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        log.info("sweep.resume=true: no earlier sweep of this command here; starting a new one")
        return None
    run_id = found[0].info.run_id
    reopen_parent(client, run_id)
    log.info("sweep.resume=true: continuing sweep parent run %s", run_id)
    return run_id


def resume_job(cfg: DictConfig, ctx: JobContext) -> tuple[DictConfig, dict[str, Any] | None]:
    """(the config to run, None), or (cfg, the final metrics) of a job already FINISHED in
    the resumed sweep. An interrupted run of the job with its last.pt on this machine is
    continued (the config gets trainer.resume=<its run id>); without one, the job runs
    anew and ctx names the run(s) it supersedes. Outside a resumed sweep: (cfg, None)."""
    if not (ctx.parent_run_id and OmegaConf.select(cfg, "sweep.resume") is True):
        return cfg, None
    from mlflow.tracking import MlflowClient

    from mnist.tracking.params import CONFIG_HASH_TAG, config_sha256  # imports torch

    client = MlflowClient(store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns))
    parent = client.get_run(ctx.parent_run_id)
    same_job = f"tags.`{CONFIG_HASH_TAG}` = '{config_sha256(cfg)}'"
    runs = children(client, parent.info.experiment_id, ctx.parent_run_id, same_job)
    earlier = current_runs(runs)[::-1]  # the latest first
    if not earlier:
        return cfg, None
    if finished := [run for run in earlier if run.info.status == "FINISHED"]:
        run = finished[0]
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


def mark_superseded(uri: str, ctx: JobContext, new_run_id: str) -> None:
    """Tag the runs a restarted job's new run replaces (see resume_job). One still RUNNING
    lost its process (SIGKILL, power loss) before it could end the run: it is ended FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for run_id in filter(None, ctx.extra_tags.get(SUPERSEDES_TAG, "").split(",")):
        store.retry_when_locked(
            lambda run_id=run_id: client.set_tag(run_id, SUPERSEDED_TAG, new_run_id)
        )
        if client.get_run(run_id).info.status == "RUNNING":
            store.retry_when_locked(lambda run_id=run_id: client.set_terminated(run_id, "FAILED"))
