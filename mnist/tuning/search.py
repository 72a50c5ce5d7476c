"""`scripts/tune.py`: check everything, join (or create) the study, run its trials here or
in n_jobs worker processes, then sum the study up: its MLflow parent run, Optuna's plots
and the best trial as an experiment preset. Every check that can fail on the user's input
runs before the first trial. The command writes where runs write (its output directory, the
MLflow store, the study's storage); a preset goes into conf/experiment/ only when asked."""

from __future__ import annotations

import logging
import shutil
import textwrap
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist.atomic import written_atomically
from mnist.config import validate_config
from mnist.context import JobContext
from mnist.data.fetch import ensure_mnist
from mnist.errors import ConfigError, SearchInterrupted, WorkerInterrupted
from mnist.overrides import override_key
from mnist.paths import REPO_ROOT
from mnist.tracking import store
from mnist.training.signals import stop_on_signals
from mnist.tuning import tracking
from mnist.tuning.objective import ComposeFn, Objective, TrainFn, TrialInterrupted
from mnist.tuning.preset import write_preset
from mnist.tuning.space import (
    Param,
    check_space,
    first_trials,
    override_text,
    parse_space,
    space_signature,
)
from mnist.tuning.study import (
    check_settings,
    counts,
    make_pruner,
    make_sampler,
    open_study,
    run_trials,
    stores,
    study_dir,
)
from mnist.tuning.workers import is_worker, run_workers, worker_command

log = logging.getLogger(__name__)

# Keys of conf/tune.yaml that configure the search, not the training (tested to be all the
# keys tune.yaml adds to train.yaml).
TUNE_KEYS = ("hparams_search", "n_trials", "timeout_s", "n_jobs", "storage", "heartbeat_s",
             "save_preset", "overwrite", "preset_dir")  # fmt: skip
# Where a trial runs and writes, not what it trains: left out of what a study compares
# when it is continued, and out of the preset.
PLACE_KEYS = ("paths", "device", "hydra")
# The folder of the output directory's experiment/ that holds the search's preset: an
# option no committed preset has (see _write_best_preset).
SEARCH_PRESETS = "search"
# How long a process that joins a study waits for its creator to open the parent run.
JOIN_TIMEOUT_S = 120


@dataclass
class SearchContext(JobContext):
    """A job's context (mnist/context.py) plus what the tune command needs: every config
    group a search may pick an option of (unselected ones too), the where-to-write keys
    and the command line its workers repeat."""

    groups: set[str] = field(default_factory=set)
    # hydra.job.config.override_dirname.exclude_keys: where-to-write keys (conf/train.yaml).
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
    """The training config's groups, from Hydra's runtime choices: what a search may pick
    an option of, and what a preset selects in its defaults list."""
    return {group for group in choices if not group.startswith(("hydra/", "hparams_search"))}


def training_config(cfg: DictConfig) -> DictConfig:
    """The tune config as the training config of a trial: resolved (tune.yaml names the
    MLflow experiment after the study), without the search's own keys."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        for key in TUNE_KEYS:
            cfg.pop(key, None)
    return cfg


def recipe_overrides(ctx: SearchContext) -> list[str]:
    """The command's overrides that change what a trial trains: the ones the study's trials
    share, kept in its preset and compared when the study is continued."""
    return sorted(
        o
        for o in ctx.overrides
        if override_key(o).split(".")[0] not in (*TUNE_KEYS, *PLACE_KEYS)
        and override_key(o) not in ctx.where_keys
    )


def composer(ctx: SearchContext) -> ComposeFn:
    """Trial overrides -> (its training config, each group's option): the tune config
    composed as this command composed it, plus the trial's overrides."""

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
    """Returns the study's best validation accuracy (None before any trial completed).
    ConfigError/DataError/TrackingError before the first trial when the input cannot work;
    SearchInterrupted (in a worker, WorkerInterrupted) after a SIGINT/SIGTERM, with the
    study consistent."""
    space, base, compose = _checked(cfg, ctx)
    uri, url = stores(cfg)
    store.check_store(uri, experiment=base.logger.experiment)
    ensure_mnist(base.data.root, verify=base.data.verify_checksums)
    search = cfg.hparams_search
    study, created = open_study(
        url, search.study, make_sampler(search.sampler), make_pruner(search.pruner),
        cfg.heartbeat_s,
    )  # fmt: skip
    parent = _parent_run(study, created, uri, base.logger.experiment, url, space, cfg, ctx)
    log.info("Study %r in %s; MLflow parent run %s in %s", search.study, url, parent, uri)
    deadline = None if cfg.timeout_s is None else time.monotonic() + cfg.timeout_s
    if is_worker():
        with _interrupted_search(search.study):
            _run_here(cfg, ctx, study, space, parent, train, compose, deadline)
        return None
    tracking.reopen_parent_run(uri, parent)
    status = "FAILED"
    try:
        with _interrupted_search(search.study):
            if cfg.n_jobs == 1:
                _run_here(cfg, ctx, study, space, parent, train, compose, deadline)
            else:
                _run_workers(cfg, ctx, deadline)
        status = "FINISHED"
    except SearchInterrupted:
        status = "KILLED"
        raise
    finally:
        _summarize(cfg, ctx, study, uri, url, parent, status)
    return study.best_value if _has_complete(study) else None


@contextmanager
def _interrupted_search(study: str) -> Iterator[None]:
    """A trial stopped by a signal (or a signal between trials) stops the search: in a
    worker, without a line of its own (the command that started it says how to go on)."""
    try:
        yield
    except (KeyboardInterrupt, TrialInterrupted) as e:
        raise (WorkerInterrupted() if is_worker() else SearchInterrupted(study)) from e


def _checked(cfg: DictConfig, ctx: SearchContext) -> tuple[list[Param], DictConfig, ComposeFn]:
    """(the search space, the training config the trials start from, the trial composer),
    all checked: nothing is written before this returns."""
    check_settings(cfg)
    saved = _saved_preset(cfg)
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
    """The study's MLflow run, opened by the process that created the study; a process
    joining it first checks it searches the same space with the same overrides."""
    recipe = recipe_overrides(ctx)
    identity = {"search_space": space_signature(space), "recipe_overrides": recipe}
    if created:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        for params in first_trials(space, cfg.hparams_search.enqueue):
            study.enqueue_trial(params)
    else:
        _wait_for(study, "mlflow_parent_run_id")
        stored = {key: study.user_attrs.get(key) for key in identity}
        if stored != identity:
            raise ConfigError(
                f"study {study.study_name!r} in {url} searches {stored['search_space']} with "
                f"overrides {stored['recipe_overrides']}, not {identity['search_space']} with "
                f"{recipe}: continue it with its own command, or start another study with "
                "hparams_search.study=<new name>"
            )
    if "mlflow_parent_run_id" not in study.user_attrs:
        search = OmegaConf.to_container(cfg.hparams_search, resolve=True)
        run_id = tracking.create_parent_run(
            uri, experiment, study.study_name, url, space, search, recipe
        )
        study.set_user_attr("mlflow_parent_run_id", run_id)
    return study.user_attrs["mlflow_parent_run_id"]


def _wait_for(study: optuna.Study, key: str) -> None:
    """A study created a moment ago by another process gets its attributes right after
    (user_attrs reads them from the storage each time)."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while key not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(1)


def _run_here(
    cfg: DictConfig,
    ctx: SearchContext,
    study: optuna.Study,
    space: list[Param],
    parent: str,
    train: TrainFn,
    compose: ComposeFn,
    deadline: float | None,
) -> None:
    trials_dir = study_dir(cfg) / "trials"
    base_overrides = [o for o in ctx.overrides if override_key(o).split(".")[0] not in TUNE_KEYS]
    with stop_on_signals() as stop_requested:
        objective = Objective(train, compose, space, base_overrides, trials_dir, parent)
        poll_s = min(cfg.heartbeat_s, 5)
        run_trials(study, objective, cfg.n_trials, deadline, stop_requested, poll_s)
        if stop_requested():
            raise KeyboardInterrupt


def _run_workers(cfg: DictConfig, ctx: SearchContext, deadline: float | None) -> None:
    timeout_s = None if deadline is None else max(1.0, deadline - time.monotonic())
    commands = [
        worker_command(ctx.argv, timeout_s, ctx.output_dir / f"worker_{i}")
        for i in range(cfg.n_jobs)
    ]
    statuses = run_workers(commands)
    if any(s == 130 for s in statuses):
        raise KeyboardInterrupt
    failed = [(i, s) for i, s in enumerate(statuses) if s != 0]
    if failed:
        raise RuntimeError(
            "worker processes failed (index, exit status): "
            f"{failed}; their logs: {ctx.output_dir}/worker_<index>/"
        )


def _shown(url: str) -> str:
    """A storage inside the repository by its relative path: the preset is committed."""
    path = Path(url.removeprefix("sqlite:///"))
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else url


def _has_complete(study: optuna.Study) -> bool:
    return any(
        t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)
    )


def _saved_preset(cfg: DictConfig) -> Path | None:
    """Where save_preset=true copies the preset (conf/experiment/ by default); None when
    not asked: a command never replaces a file under version control on its own."""
    if not cfg.save_preset:
        return None
    return Path(cfg.preset_dir) / f"tuned_{cfg.hparams_search.study}.yaml"


def _summarize(
    cfg: DictConfig,
    ctx: SearchContext,
    study: optuna.Study,
    uri: str,
    url: str,
    parent: str,
    status: str,
) -> None:
    """The best trial written as a preset in the output directory, the parent run brought
    up to date (the preset among its artifacts), and the preset saved when asked."""
    preset = _write_best_preset(cfg, ctx, study, url) if _has_complete(study) else None
    metrics = tracking.finish_parent_run(uri, parent, study, ctx.output_dir, status, preset)
    ended, running = counts(study)
    log.info(
        "Study %r: %d trials ended (%d complete, %d pruned, %d failed), %d running elsewhere; "
        "pruning saved %d epochs (~%.0f s of training)",
        study.study_name, ended, metrics["trials/complete"], metrics["trials/pruned"],
        metrics["trials/fail"], running, metrics["pruning/epochs_saved"],
        metrics["pruning/time_saved_s"],
    )  # fmt: skip
    saved = _saved_preset(cfg)
    if preset is not None and saved is not None:
        with written_atomically(saved) as staged:
            shutil.copyfile(preset, staged)
        log.info("Preset saved as %s: python scripts/train.py experiment=%s", saved, saved.stem)
    if hint := tracking.how_to_open_trials(uri, parent):
        log.info("Compare the trials: %s", hint)


def _write_best_preset(cfg: DictConfig, ctx: SearchContext, study: optuna.Study, url: str) -> Path:
    """<output dir>/experiment/search/tuned_<study>.yaml, for `--config-dir <output dir>
    experiment=search/tuned_<study>`: Hydra looks in conf/ before any --config-dir, so
    under the name save_preset gives it a committed preset of the study (the shipped
    conf/experiment/tuned_fast.yaml) would be trained instead."""
    best = study.best_trial
    by_path = {p.path: p for p in parse_space(cfg.hparams_search.params)}
    params = [f"{k}={override_text(by_path[k].value(v))}" for k, v in best.params.items()]
    name = f"tuned_{study.study_name}"
    option = f"{SEARCH_PRESETS}/{name}"
    states = Counter(t.state.name.lower() for t in study.trials)
    provenance = textwrap.fill(
        f"Written by scripts/tune.py: the best trial of study {study.study_name!r} in "
        f"{_shown(url)}, trial {best.number} of {len(study.trials)} "
        f"({', '.join(f'{n} {state}' for state, n in sorted(states.items()))}): "
        f"best/val_acc {best.value:.6g} on the validation split (the test set chose nothing).",
        width=90,
    )
    comment = (
        f"{provenance}\nRe-train: python scripts/train.py experiment={name}  (-m: seeds 0, 1, 2)"
        "\nas saved in conf/experiment/; from the search's output directory or its parent run's"
        f"\nartifacts: python scripts/train.py --config-dir <that folder> experiment={option}"
    )
    overrides = [*study.user_attrs["recipe_overrides"], *params]
    path = ctx.output_dir / "experiment" / f"{option}.yaml"
    write_preset(path, overrides, ctx.groups, comment)
    log.info(
        "Best trial %d: val acc %.4f with %s -> %s\nRe-train it: python scripts/train.py "
        "--config-dir %s experiment=%s  (save_preset=true saves it in %s)",
        best.number, best.value, " ".join(params), path, ctx.output_dir, option, cfg.preset_dir,
    )  # fmt: skip
    return path
