"""The Optuna study, in a database (SQLite beside the MLflow store by default) so that
re-running the command continues it and any number of processes can share it."""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from mnist.errors import ConfigError, TrackingError
from mnist.tracking.store import tracking_uri
from mnist.training.signals import StopRequested
from mnist.tuning.objective import TrialFailed
from mnist.values import is_int, is_number

# The heartbeat and its retry are experimental in Optuna, and say so at every use.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "successive_halving", "none")


def _settings_problems(cfg: DictConfig) -> Iterator[str]:
    search = cfg.hparams_search
    for key in ("study", "params"):
        if OmegaConf.is_missing(search, key):
            yield f"hparams_search.{key} is not set (conf/hparams_search/<name>.yaml sets it)"
    if OmegaConf.is_missing(search, "study"):
        return
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(search.study)):
        yield f"hparams_search.study={search.study!r} must be letters, digits, _ or -"
    integers = {key: (cfg[key], 1) for key in ("n_trials", "n_jobs", "heartbeat_s")}
    for key in ("min_epochs", "reduction_factor"):
        integers[f"hparams_search.pruner.{key}"] = (search.pruner[key], 1)
    for part in ("sampler", "pruner"):
        integers[f"hparams_search.{part}.n_startup_trials"] = (search[part].n_startup_trials, 0)
    for key, (value, least) in integers.items():
        if not (is_int(value) and value >= least):
            yield f"{key}={value!r} must be an integer >= {least}"
    for key in ("save_preset", "overwrite"):
        if not isinstance(cfg[key], bool):
            yield f"{key}={cfg[key]!r} must be true or false"
    timeout = cfg.timeout_s
    if timeout is not None and not (is_number(timeout) and timeout > 0):
        yield f"timeout_s={timeout!r} must be > 0, or null for no limit"
    for part, names in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if (name := search[part].name) not in names:
            yield f"hparams_search.{part}.name={name!r} is not one of {', '.join(names)}"


def check_settings(cfg: DictConfig) -> None:
    if problems := list(_settings_problems(cfg)):
        raise ConfigError("Invalid search settings: " + "; ".join(problems) + ".")


def study_dir(cfg: DictConfig) -> Path:
    """outputs/tune/<study>/: the trials' directories (and the study's SQLite file when the
    MLflow store has no directory here)."""
    return Path(cfg.paths.outputs).resolve() / "tune" / str(cfg.hparams_search.study)


def stores(cfg: DictConfig) -> tuple[str, str]:
    """(MLflow URI, study storage URL): `storage` if set, else optuna.db beside an SQLite
    store's file, else in study_dir, so that the study follows the store."""
    uri = tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    if cfg.storage:
        return uri, str(cfg.storage)
    local = uri.startswith("sqlite:///")
    folder = Path(uri.removeprefix("sqlite:///")).parent if local else study_dir(cfg)
    return uri, f"sqlite:///{folder / 'optuna.db'}"


class SeededPerTrial(optuna.samplers.BaseSampler):
    """Trial n draws from a sampler seeded with seed + n: one seeded sampler per process
    would repeat its draws in every process that runs the study (resumed, workers)."""

    def __init__(self, make: Callable[[int | None], Any], seed: int | None) -> None:
        self._make, self._seed, self._sampler = make, seed, make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler = self._make(None if self._seed is None else self._seed + trial.number)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: Any) -> Any:
        return self._sampler.sample_relative(study, trial, space)

    def sample_independent(self, study: Any, trial: FrozenTrial, name: str, dist: Any) -> Any:
        return self._sampler.sample_independent(study, trial, name, dist)

    def after_trial(self, study: Any, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._sampler.after_trial(study, trial, state, values)


def make_sampler(settings: DictConfig) -> optuna.samplers.BaseSampler:
    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        if settings.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: parallel workers treat running trials as bad, so they spread out.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=settings.n_startup_trials, constant_liar=True
        )

    return SeededPerTrial(make, settings.seed)


def make_pruner(settings: DictConfig) -> optuna.pruners.BasePruner:
    if settings.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.min_epochs - 1
        )
    if settings.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=settings.min_epochs, reduction_factor=settings.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(url: str, search: DictConfig, heartbeat_s: int) -> tuple[optuna.Study, bool]:
    """(the study, whether this call created it): creating is atomic in the database, so
    of several processes started at once one is the creator."""
    kwargs: dict[str, Any] = dict(study_name=search.study, storage=_storage(url, heartbeat_s))
    kwargs |= {"sampler": make_sampler(search.sampler), "pruner": make_pruner(search.pruner)}
    try:
        return optuna.create_study(direction="maximize", **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """For an SQLite file, a lock while the storage is opened: two processes creating a
    new file's schema at once fail ("table studies already exists")."""
    path = url.removeprefix("sqlite:///")
    if path == url or path == ":memory:":
        yield
        return
    lock = Path(path).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """A trial whose process died is marked FAIL after 3 missed heartbeats and queued again."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with _schema_lock(url):
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            )  # fmt: skip
    except Exception as e:  # SQLAlchemy: a malformed URL, a missing driver, no server
        raise TrackingError(
            f"the study storage {url} cannot be opened ({str(e).splitlines()[0]}); "
            "set storage= to an SQLAlchemy URL, or null for the SQLite file beside the MLflow store"
        ) from e


def counts(study: optuna.Study) -> tuple[int, int]:
    """(trials ended, trials running): a trial queued again does not count as ended."""
    trials = study.get_trials(deepcopy=False)
    again = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    ended = sum(t.state.is_finished() and t.number not in again for t in trials)
    return ended, sum(t.state == TrialState.RUNNING for t in trials)


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    deadline: float | None,
    stop_requested: StopRequested,
    poll_s: float,
) -> None:
    """Run trials until `n_trials` ended, the deadline passes or a stop is requested. When
    the rest all run elsewhere, wait: a process that dies leaves its trial to the queue."""
    while not stop_requested() and (deadline is None or time.monotonic() < deadline):
        optuna.storages.fail_stale_trials(study)
        ended, running = counts(study)
        if ended >= n_trials:
            return
        if ended + running >= n_trials:
            time.sleep(poll_s)
            continue
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))
