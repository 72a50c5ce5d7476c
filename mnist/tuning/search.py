"""scripts/tune.py: check everything, join (or create) the study, run its trials here or in
n_jobs worker processes, then sum the study up. A worker is this command started again with
n_jobs=1, in a session of its own so that a Ctrl-C reaches it once (forwarded), not twice: a
second signal stops a trial at once."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist.config import flatten, validate_config
from mnist.context import JobContext
from mnist.data.fetch import ensure_mnist
from mnist.errors import ConfigError, Interrupted, WorkerInterrupted
from mnist.overrides import override_key
from mnist.tracking.store import check_store
from mnist.tracking.sweep_runs import open_study_run, reopen_study_run
from mnist.training.signals import install_handler, stop_on_signals
from mnist.tuning.objective import ComposeFn, Objective, TrainFn, TrialInterrupted
from mnist.tuning.space import Param, check_space, first_trials, parse_space
from mnist.tuning.study import check_settings, open_study, run_trials, stores, study_dir
from mnist.tuning.summary import saved_preset, summarize

log = logging.getLogger(__name__)

# The keys conf/tune.yaml adds to train.yaml: they configure the search, not the training.
TUNE_KEYS = ("hparams_search", "n_trials", "timeout_s", "n_jobs", "storage", "heartbeat_s",
             "save_preset", "overwrite", "preset_dir")  # fmt: skip
# Where a trial runs and writes, not what it trains: not part of a study's recipe.
PLACE_KEYS = ("paths", "device", "hydra")
# How long a process that joins a study waits for its creator to open the parent run.
JOIN_TIMEOUT_S = 120
# Set in a worker's environment: it leaves the study's summary to the command that started it.
WORKER_ENV = "MNIST_TUNE_WORKER"


@dataclass
class SearchContext(JobContext):
    """A job's context plus every config group, the where-to-write keys (override_dirname's
    exclude_keys) and the command line."""

    groups: set[str] = field(default_factory=set)
    where_keys: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)

    @classmethod
    def from_hydra(cls, argv: list[str] | None = None) -> SearchContext:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        ctx = super().from_hydra()
        ctx.groups = config_groups(hydra.runtime.choices)
        ctx.where_keys = list(hydra.job.config.override_dirname.exclude_keys)
        ctx.argv = list(argv or [])
        return ctx


def config_groups(choices: Mapping[str, Any]) -> set[str]:
    return {group for group in choices if not group.startswith(("hydra/", "hparams_search"))}


def training_config(cfg: DictConfig) -> DictConfig:
    """The tune config resolved (it names the experiment after the study), less TUNE_KEYS."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        for key in TUNE_KEYS:
            cfg.pop(key, None)
    return cfg


def recipe_overrides(ctx: SearchContext) -> list[str]:
    """The command's overrides that change what a trial trains: the study's recipe."""
    return sorted(
        o
        for o in ctx.overrides
        if override_key(o).split(".")[0] not in (*TUNE_KEYS, *PLACE_KEYS)
        and override_key(o) not in ctx.where_keys
    )


def composer(ctx: SearchContext) -> ComposeFn:
    """Trial overrides -> (its training config, each group's option), composed as this
    command's."""

    def compose(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
        from hydra import compose as hydra_compose
        from hydra.errors import HydraException

        try:
            cfg = hydra_compose("tune", [*ctx.overrides, *overrides], return_hydra_config=True)
        except HydraException as e:
            raise ConfigError(str(e).splitlines()[0]) from e
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if v is not None}
        with open_dict(cfg):
            del cfg["hydra"]
        return training_config(cfg), choices

    return compose


def run_search(cfg: DictConfig, ctx: SearchContext, train: TrainFn) -> float | None:
    """The study's best validation accuracy (None before a trial completed). A signal
    raises Interrupted (in a worker, WorkerInterrupted)."""
    space, base, compose = _checked(cfg, ctx)
    uri, url = stores(cfg)
    check_store(uri, experiment=base.logger.experiment)
    ensure_mnist(base.data.root, verify=base.data.verify_checksums)
    name = cfg.hparams_search.study
    study, created = open_study(url, cfg.hparams_search, cfg.heartbeat_s)
    parent = _parent_run(study, created, uri, base.logger.experiment, url, space, cfg, ctx)
    log.info("Study %r in %s; MLflow parent run %s in %s", name, url, parent, uri)
    deadline = None if cfg.timeout_s is None else time.monotonic() + cfg.timeout_s
    worker = is_worker()  # a worker leaves the summary to the command that started it
    if not worker:
        reopen_study_run(uri, parent)
    status = "FAILED"
    try:
        if cfg.n_jobs > 1 and not worker:
            run_workers(ctx.argv, cfg.n_jobs, ctx.output_dir, deadline)
        else:
            shared = [o for o in ctx.overrides if override_key(o).split(".")[0] not in TUNE_KEYS]
            objective = Objective(train, compose, space, shared, study_dir(cfg) / "trials", parent)
            with stop_on_signals() as stop_requested:
                poll_s = min(cfg.heartbeat_s, 5)
                run_trials(study, objective, cfg.n_trials, deadline, stop_requested, poll_s)
                if stop_requested():
                    raise KeyboardInterrupt
        status = "FINISHED"
    except (KeyboardInterrupt, TrialInterrupted) as e:
        # A worker says nothing: the command that started it says how to go on.
        status = "KILLED"
        stopped = f"search interrupted; run the same command again to continue study {name!r}"
        raise (WorkerInterrupted() if worker else Interrupted(stopped)) from e
    finally:
        if not worker:
            summarize(cfg, ctx, study, (uri, url), parent, status)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_value if complete else None


def _checked(cfg: DictConfig, ctx: SearchContext) -> tuple[list[Param], DictConfig, ComposeFn]:
    """(search space, base training config, trial composer), all checked before anything
    is written."""
    check_settings(cfg)
    saved = saved_preset(cfg)
    if saved is not None and saved.exists() and not cfg.overwrite:
        raise ConfigError(
            f"save_preset=true would replace {saved}: add overwrite=true to replace it, or "
            "leave out save_preset (the preset is written to this command's output directory "
            "and to the study's MLflow parent run either way)"
        )
    space = parse_space(cfg.hparams_search.params)
    base = training_config(cfg)
    validate_config(base)
    compose = composer(ctx)
    check_space(space, base, ctx.groups, lambda overrides: compose(overrides)[0])
    first_trials(space, cfg.hparams_search.enqueue)
    return space, base, compose


def _parent_run(
    study: optuna.Study,
    created: bool,
    uri: str,
    experiment: str,
    url: str,
    space: list[Param],
    cfg: DictConfig,
    ctx: SearchContext,
) -> str:
    """The study's MLflow run, opened by its creator; a process joining the study checks
    it searches the same space with the same recipe."""
    recipe = recipe_overrides(ctx)
    signature = json.dumps({p.path: p.describe() for p in space}, sort_keys=True)
    identity = {"search_space": signature, "recipe_overrides": recipe}
    if created:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        for params in first_trials(space, cfg.hparams_search.enqueue):
            study.enqueue_trial(params)
    else:
        # A study created a moment ago by another process gets its attributes right after.
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while "mlflow_parent_run_id" not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(1)
        stored = {key: study.user_attrs.get(key) for key in identity}
        if stored != identity:
            raise ConfigError(
                f"study {study.study_name!r} in {url} searches {stored['search_space']} with "
                f"overrides {stored['recipe_overrides']}, not {identity['search_space']} with "
                f"{recipe}: continue it with its own command, or start another study with "
                "hparams_search.study=<new name>"
            )
    if "mlflow_parent_run_id" not in study.user_attrs:
        settings = OmegaConf.to_container(cfg.hparams_search, resolve=True)
        params = {f"search.{p.path}": p.describe() for p in space}
        params |= flatten({key: settings[key] for key in ("sampler", "pruner")})
        params |= {"study": study.study_name, "storage": url}
        tags = {"optuna.storage": url, "hydra.overrides": " ".join(recipe)}
        run_id = open_study_run(uri, experiment, study.study_name, tags, params)
        study.set_user_attr("mlflow_parent_run_id", run_id)
    return study.user_attrs["mlflow_parent_run_id"]


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def worker_command(argv: list[str], timeout_s: float | None, run_dir: Path) -> list[str]:
    """This command's line for one job, with the time left, one torch thread unless set, and
    its own output directory."""
    args = [a for a in argv[1:] if override_key(a) not in ("n_jobs", "timeout_s", "hydra.run.dir")]
    args += ["n_jobs=1", f"hydra.run.dir={run_dir}"]
    if timeout_s is not None:
        args.append(f"timeout_s={timeout_s}")
    if not any(override_key(a) == "device.num_threads" for a in args):
        args.append("device.num_threads=1")
    return [sys.executable, argv[0], *args]


def run_workers(argv: list[str], n_jobs: int, output_dir: Path, deadline: float | None) -> None:
    """Run n_jobs workers to their end; KeyboardInterrupt when a signal stopped them."""
    timeout_s = None if deadline is None else max(1.0, deadline - time.monotonic())
    env = {**os.environ, WORKER_ENV: "1"}
    processes = [
        subprocess.Popen(
            worker_command(argv, timeout_s, output_dir / f"worker_{i}"), env=env,
            start_new_session=True,
        )
        for i in range(n_jobs)
    ]  # fmt: skip

    def forward(signum: int, frame: object) -> None:
        for process in processes:
            process.send_signal(signum)  # nothing, for one that has ended

    restore = install_handler(forward)
    try:
        statuses = [process.wait() for process in processes]
    finally:
        restore()
    if 130 in statuses:
        raise KeyboardInterrupt
    if failed := [(i, s) for i, s in enumerate(statuses) if s != 0]:
        raise RuntimeError(
            f"worker processes failed (index, exit status): {failed}; their logs: "
            f"{output_dir}/worker_<index>/"
        )
