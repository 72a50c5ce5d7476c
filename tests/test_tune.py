"""Hyperparameter search on tiny synthetic data: bad search spaces refused before any trial,
a pruned trial stopped early and marked in Optuna and MLflow, a study resumed after an
interruption or a crash with no trial lost or run twice, its preset re-trained exactly, and
several processes sharing one study (slow: whole scripts)."""

import json
import logging.handlers
import multiprocessing.forkserver
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager, suppress
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict
from optuna.trial import TrialState

from mnist.context import JobContext
from mnist.errors import ConfigError, Interrupted, TrackingError
from mnist.job import run_training
from mnist.metric_names import VAL_ACC
from mnist.tuning.search import (
    TUNE_KEYS,
    SearchContext,
    config_groups,
    run_search,
    worker_command,
)
from mnist.tuning.study import stores
from tests.helpers import CONF_DIR, REPO_ROOT, compose_config, run_script, tiny_overrides
from tests.helpers.runs import sqlite_rows, wait_until

PARENT_TAG = "mlflow.parentRunId"
# Learns the synthetic digits within an epoch / learns nothing: a trial to keep, one to prune.
GOOD_LR, USELESS_LR = 0.01, 1.0e-6
SPACE = f"""study: tiny
params:
  optimizer:
    lr: {{type: float, low: {USELESS_LR}, high: 3.0e-2, log: true}}
  trainer:
    label_smoothing: {{type: float, low: 0.0, high: 0.2}}
enqueue: []
sampler: {{name: tpe, seed: 0, n_startup_trials: 8}}
pruner: {{name: median, min_epochs: 1, n_startup_trials: 1, reduction_factor: 3}}
"""


def write_space(tmp_path: Path, name: str, text: str) -> Path:
    conf = tmp_path / "conf"
    (conf / "hparams_search").mkdir(parents=True, exist_ok=True)
    (conf / "hparams_search" / f"{name}.yaml").write_text(text)
    return conf


def tune_overrides(data_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        *tiny_overrides(data_root, tmp_path),
        f"preset_dir={tmp_path / 'conf' / 'experiment'}",
        "heartbeat_s=1",
        # One thread: two threads crawl on a loaded 2-core machine, and it changes nothing here.
        "device.num_threads=1",
        *extra,
    ]


@contextmanager
def hydra_session(overrides: list[str], output_dir: Path):
    """The tune config and context as scripts/tune.py gets them, with Hydra initialised for
    the trials' composition; `hydra.searchpath` in `overrides` adds test configs."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("tune", overrides, return_hydra_config=True)
        ctx = SearchContext(
            output_dir=output_dir,
            overrides=overrides,
            groups=config_groups(cfg.hydra.runtime.choices),
            where_keys=list(cfg.hydra.job.config.override_dirname.exclude_keys),
        )
        with open_dict(cfg):
            del cfg["hydra"]
        yield cfg, ctx


def search(tmp_path: Path, overrides: list[str], train=run_training) -> float | None:
    with hydra_session(overrides, tmp_path / "tune") as (cfg, ctx):
        return run_search(cfg, ctx, train)


def load_study(tmp_path: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    )


def study_runs(tmp_path: Path, experiment: str = "tune_tiny"):
    """(the parent run, {trial number: its run}): every trial has exactly one run."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert {r.data.tags[PARENT_TAG] for r in children} == {parent.info.run_id}
    numbers = Counter(r.data.tags["optuna.trial"] for r in children)
    assert max(numbers.values()) == 1, numbers
    return client, parent, {int(r.data.tags["optuna.trial"]): r for r in children}


def test_tune_keys_are_what_tune_adds_to_the_training_config():
    assert set(compose_config([], "tune")) - set(compose_config([], "train")) == set(TUNE_KEYS)


BAD_SPACES = {
    "unknown path": ("optimizer: {lrr: {type: float, low: 0.001, high: 0.1}}",
                     "'optimizer.lrr' is not a key of the training config"),
    "inverted range": ("optimizer: {lr: {type: float, low: 0.1, high: 0.001}}",
                       "the range [0.1, 0.001] is empty or inverted"),
    "empty range": ("trainer: {batch_size: {type: int, low: 64, high: 64}}",
                    "the range [64, 64] is empty or inverted"),
    "log from zero": ("optimizer: {weight_decay: {type: float, low: 0.0, high: 0.1, log: true}}",
                      "a log range needs low > 0"),
    "no such option": ("optimizer: {type: categorical, choices: [adam, adamx]}",
                       "'adamx' is not an option of config group 'optimizer'"),
    "unknown type": ("optimizer: {lr: {type: normal, low: 0.001, high: 0.1}}",
                     "distribution type 'normal' is not one of float, int, categorical"),
    "no choices": ("trainer: {batch_size: {type: categorical, choices: []}}",
                   "choices must be a non-empty list"),
    "invalid end": ("trainer: {label_smoothing: {type: float, low: 0.0, high: 1.0}}",
                    "trainer.label_smoothing=1.0 gives an invalid config"),
    "enqueued out of range": ("optimizer: {lr: {type: float, low: 0.001, high: 0.1}}\n"
                              "enqueue: [{optimizer: {lr: 0.5}}]",
                              "hparams_search.enqueue[0]: optimizer.lr=0.5 is not in float"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_SPACES)
def test_bad_search_spaces_are_refused_before_any_trial(case, synthetic_root, tmp_path):
    params, message = BAD_SPACES[case]
    params, _, enqueue = params.partition("\n")
    conf = write_space(tmp_path, "bad", f"study: bad\nparams: {{{params}}}\n{enqueue}\n")

    def no_trial(cfg, ctx):
        raise AssertionError("a trial ran")

    overrides = tune_overrides(
        synthetic_root, tmp_path, f"hydra.searchpath=[file://{conf}]", "hparams_search=bad"
    )
    with pytest.raises(ConfigError) as refused:
        search(tmp_path, overrides, train=no_trial)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "outputs").exists()


def tiny_search(synthetic_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    conf = write_space(tmp_path, "tiny", SPACE)
    return tune_overrides(
        synthetic_root, tmp_path, f"hydra.searchpath=[file://{conf}]", "hparams_search=tiny",
        *extra,
    )  # fmt: skip


@pytest.mark.slow  # two tiny trials and the study's plots, ~30-50 s on a loaded 2-core machine
def test_a_pruned_trial_stops_early_and_is_marked_pruned_in_optuna_and_mlflow(
    tiny_cfg, synthetic_root, tmp_path, caplog
):
    tiny_cfg()  # the store, initialised
    caplog.set_level("INFO")
    overrides = tiny_search(
        synthetic_root, tmp_path, "n_trials=2",
        f"hparams_search.enqueue=[{{optimizer.lr:{GOOD_LR}}},{{optimizer.lr:{USELESS_LR}}}]",
    )  # fmt: skip
    best = search(tmp_path, overrides)

    kept, pruned = load_study(tmp_path).trials
    assert (kept.state, pruned.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert best == kept.value
    assert sorted(kept.intermediate_values) == [1, 2]
    assert sorted(pruned.intermediate_values) == [1]  # stopped after its first epoch
    assert pruned.intermediate_values[1] < kept.intermediate_values[1]
    client, parent, runs = study_runs(tmp_path)
    assert (runs[0].info.status, runs[0].data.tags["optuna.state"]) == ("FINISHED", "COMPLETE")
    assert (runs[1].info.status, runs[1].data.tags["optuna.state"]) == ("KILLED", "PRUNED")
    assert len(client.get_metric_history(runs[1].info.run_id, VAL_ACC)) == 1
    assert "test/acc" not in runs[1].data.metrics  # a pruned trial never reaches the test set
    assert runs[1].info.run_name.startswith("trial 1 fast optimizer.lr=1e-06")
    assert parent.info.status == "FINISHED"
    # Its link: the study's own trials in MLflow's training view.
    view = f"viewStateShareKey=runs-of-{parent.info.run_id}&workflowType=machine_learning"
    assert f"Compare the trials: make ui STORE={tmp_path / 'mlruns'}, then open http" in caplog.text
    assert view in caplog.text.splitlines()[-1]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert f"mlflow.sharedViewState.runs-of-{parent.info.run_id}" in experiment.tags
    assert parent.data.metrics["trials/pruned"] == 1
    assert parent.data.metrics["pruning/epochs_saved"] == 1
    assert parent.data.metrics["best/val_acc"] == kept.value
    assert parent.data.params["search.optimizer.lr"] == f"float [{USELESS_LR}, 0.03] log"
    assert parent.data.params["pruner.name"] == "median"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "optimization_history.png",
        "intermediate_values.png",
        "experiment",  # experiment/search/tuned_tiny.yaml
    }  # fmt: skip  (importances need two complete trials)


def test_a_storage_that_cannot_be_opened_is_refused_before_any_trial(
    tiny_cfg, synthetic_root, tmp_path
):
    tiny_cfg()
    overrides = tiny_search(synthetic_root, tmp_path, "storage=nosuchdb://study")
    with pytest.raises(TrackingError, match="the study storage nosuchdb://study cannot be opened"):
        search(tmp_path, overrides, train=lambda cfg, ctx: pytest.fail("a trial ran"))


def checkout_state() -> tuple[str, dict[str, bytes]]:
    """`git status` of the repository and the contents of its conf/experiment/."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return status, {p.name: p.read_bytes() for p in (CONF_DIR / "experiment").iterdir()}


# Slow: three searches (one tiny trial, then two that only sum the study up), ~25 s.
@pytest.mark.slow
def test_a_study_writes_only_where_runs_write_and_saves_its_preset_only_when_asked(
    synthetic_root, tmp_path, empty_mlflow_db, monkeypatch
):
    # A quick try with MLFLOW_TRACKING_URI set, and preset_dir left at conf/experiment/.
    mlflow_db = tmp_path / "elsewhere" / "mlflow.db"
    mlflow_db.parent.mkdir()
    shutil.copy(empty_mlflow_db, mlflow_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}")
    overrides = [
        o for o in tiny_search(synthetic_root, tmp_path, "n_trials=1", "trainer.epochs=1")
        if not o.startswith("preset_dir=")
    ]  # fmt: skip
    before = checkout_state()

    search(tmp_path, overrides)

    assert checkout_state() == before
    assert not (tmp_path / "mlruns").exists()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{mlflow_db.parent}/optuna.db")
    assert len(study.trials) == 1
    preset = tmp_path / "tune" / "experiment" / "search" / "tuned_tiny.yaml"
    assert preset.read_text().startswith("# @package _global_\n# Written by scripts/tune.py")
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    experiment_id = client.get_experiment_by_name("tune_tiny").experiment_id
    (parent,) = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` IS NULL")
    (artifact,) = client.list_artifacts(parent.info.run_id, "experiment")
    assert artifact.path == "experiment/search"

    # Asked: the same command with save_preset=true (its one trial has run: it sums up).
    saved = tmp_path / "conf" / "experiment" / "tuned_tiny.yaml"
    asked = [*overrides, "save_preset=true", f"preset_dir={saved.parent}"]
    search(tmp_path, asked)
    assert saved.read_text() == preset.read_text()
    saved.write_text("# edited by hand\n")
    with pytest.raises(ConfigError, match="add overwrite=true"):
        search(tmp_path, asked)
    search(tmp_path, [*asked, "overwrite=true"])
    assert saved.read_text() == preset.read_text()


# Slow: a one-trial search of the shipped study, then train.py composing the printed command.
@pytest.mark.slow
def test_the_printed_retrain_command_trains_the_search_result_not_the_committed_preset(
    tiny_cfg, synthetic_root, tmp_path, caplog
):
    """The shipped study `fast` has a committed conf/experiment/tuned_fast.yaml, which Hydra
    finds before anything --config-dir adds: the command must name another option."""
    assert (CONF_DIR / "experiment" / "tuned_fast.yaml").is_file()
    tiny_cfg()
    overrides = [
        o for o in tune_overrides(synthetic_root, tmp_path, "hparams_search=fast", "n_trials=1")
        if o != "trainer.epochs=2"
    ] + ["trainer.epochs=1"]  # fmt: skip
    caplog.set_level("INFO", logger="mnist.tuning")
    search(tmp_path, overrides)

    (best,) = load_study(tmp_path, "fast").trials
    printed = re.search(
        r"python scripts/train\.py --config-dir (\S+) (experiment=[^\s;)]+)", caplog.text
    )
    assert printed, caplog.text
    composed = run_script("train", "--config-dir", printed[1], printed[2], "--cfg", "job")
    assert composed.returncode == 0, composed.stderr[-2000:]
    cfg = OmegaConf.create(composed.stdout)
    trained = {key: OmegaConf.select(cfg, key, default="unset") for key in best.params}
    # model.stages is a categorical of lists: Optuna keeps its option as text.
    assert trained == {key: yaml.safe_load(v) if isinstance(v, str) else v
                       for key, v in best.params.items()}  # fmt: skip
    # The search's own override, not the committed preset's 2 epochs.
    assert cfg.trainer.epochs == best.user_attrs["epochs"] == 1
    assert cfg.logger.experiment == "tuned_fast"


def test_an_existing_preset_is_refused_before_any_trial_with_nothing_written(
    synthetic_root, tmp_path
):
    overrides = tiny_search(synthetic_root, tmp_path, "save_preset=true")
    saved = tmp_path / "conf" / "experiment" / "tuned_tiny.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text("# reviewed and committed\n")
    with pytest.raises(ConfigError) as refused:
        search(tmp_path, overrides, train=lambda cfg, ctx: pytest.fail("a trial ran"))
    assert str(refused.value).startswith(f"save_preset=true would replace {saved}: add overwrite")
    assert "\n" not in str(refused.value)
    assert saved.read_text() == "# reviewed and committed\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]  # no mlruns, outputs, tune


@pytest.mark.parametrize(
    ("overrides", "env", "expected"),
    [
        pytest.param([], None, "{tmp}/mlruns/optuna.db", id="paths.mlruns"),
        pytest.param([], "sqlite:///{tmp}/env/mlflow.db", "{tmp}/env/optuna.db", id="env"),
        pytest.param(["logger.tracking_uri=sqlite:///{tmp}/cfg/runs.db"],
                     "sqlite:///{tmp}/env/mlflow.db", "{tmp}/cfg/optuna.db", id="logger"),
        pytest.param([], "http://127.0.0.1:5000", "{tmp}/outputs/tune/fast/optuna.db",
                     id="server"),
        pytest.param(["logger.tracking_uri=postgresql://db/mlflow"], None,
                     "{tmp}/outputs/tune/fast/optuna.db", id="database"),
        pytest.param(["storage=sqlite:///{tmp}/shared.db"], "sqlite:///{tmp}/env/mlflow.db",
                     "{tmp}/shared.db", id="storage="),
    ],
)  # fmt: skip
def test_the_study_storage_follows_the_mlflow_store(
    overrides, env, expected, tmp_path, monkeypatch
):
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env.format(tmp=tmp_path))
    cfg = compose_config([
        f"paths.mlruns={tmp_path / 'mlruns'}", f"paths.outputs={tmp_path / 'outputs'}",
        *(o.format(tmp=tmp_path) for o in overrides),
    ], "tune")  # fmt: skip
    assert stores(cfg)[1] == "sqlite:///" + expected.format(tmp=tmp_path)
    assert list(tmp_path.iterdir()) == []  # decided, nothing created


@pytest.mark.slow  # ~5 s, a process importing mnist.tuning.study (torch)
def test_processes_creating_one_study_file_at_once_all_open_it(tmp_path):
    # Without a lock, of 3 processes creating a new SQLite file's schema at once, one or two
    # fail ("table studies already exists") in most rounds; 4 rounds catch it. The processes
    # are forked from one that imported mnist.tuning.study once (not this module), fresh
    # processes, not copies of this one and its threads; they run the builtin exec.
    urls = [f"sqlite:///{tmp_path / f'race{n}' / 'optuna.db'}" for n in range(4)]
    open_storage = "from mnist.tuning.study import _storage; _storage({!r}, heartbeat_s=60)"
    processes = multiprocessing.get_context("forkserver")
    processes.set_forkserver_preload(["mnist.tuning.study"])
    try:
        with processes.Pool(3) as pool:
            for url in urls:
                # exec returns None, and a process's exception is raised here.
                assert pool.map(exec, [open_storage.format(url)] * 3) == [None] * 3
    finally:  # the server process ends with the test (Python's own tests stop it so)
        multiprocessing.forkserver._forkserver._stop()


def interrupted_at_trial(number: int):
    """run_training, with a SIGTERM to this process during the first epoch of trial
    `number`, as a cluster's scheduler or `kill` would send it."""

    def train(cfg, ctx: JobContext):
        observe = ctx.epoch_observer
        if ctx.extra_tags["optuna.trial"] == str(number):

            def terminate_then_observe(metrics, epoch):
                signal.raise_signal(signal.SIGTERM)
                observe(metrics, epoch)

            ctx.epoch_observer = terminate_then_observe
        return run_training(cfg, ctx)

    return train


# Slow: three tiny searches and a re-training, ~40 s on a loaded 2-core machine; CI runs it.
@pytest.mark.slow
def test_an_interrupted_study_resumes_with_no_trial_lost_or_run_twice(
    tiny_cfg, synthetic_root, tmp_path, caplog
):
    tiny_cfg()
    overrides = tiny_search(
        synthetic_root, tmp_path, "n_trials=3", "hparams_search.pruner.name=none",
        "save_preset=true", "overwrite=true",
    )  # fmt: skip
    caplog.set_level("INFO")
    optuna_log = logging.handlers.BufferingHandler(capacity=10_000)  # Optuna's do not propagate
    logging.getLogger("optuna").addHandler(optuna_log)
    try:
        with pytest.raises(Interrupted, match="search interrupted; run the same command again"):
            search(tmp_path, overrides, train=interrupted_at_trial(1))
    finally:
        logging.getLogger("optuna").removeHandler(optuna_log)
    # Said in one line, as in a worker (test_an_interrupted_search_says_so_in_one_line_per_trial):
    # no traceback of a failed trial, nor the trial's own trainer.resume=.
    records = [*caplog.records, *optuna_log.buffer]
    assert [r for r in records if r.exc_info or "trainer.resume" in r.getMessage()] == []
    interrupted = [
        r.getMessage() for r in records if "interrupted; it runs again" in r.getMessage()
    ]
    assert interrupted == ["Trial 1 interrupted; it runs again first when the study goes on"]
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].params == trials[1].params and trials[2].system_attrs["failed_trial"] == 1
    _, parent, runs = study_runs(tmp_path)
    assert parent.info.status == "KILLED"
    assert runs[1].info.status == "KILLED"
    assert (tmp_path / "outputs/tune/tiny/trials/trial_0001/checkpoints/last.pt").is_file()

    best = search(tmp_path, overrides)  # the same command again

    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        *[TrialState.COMPLETE] * 2,
    ]
    assert trials[2].params == trials[1].params  # the interrupted trial, run again
    ended = [trials[0], trials[2], trials[3]]
    assert len({tuple(sorted(t.params.items())) for t in ended}) == 3  # none ran twice
    assert best == max(t.value for t in ended)
    _, resumed_parent, runs = study_runs(tmp_path)
    assert resumed_parent.info.run_id == parent.info.run_id
    assert resumed_parent.info.status == "FINISHED"
    assert resumed_parent.data.metrics["trials/complete"] == 3
    assert {n: r.data.tags["optuna.state"] for n, r in runs.items()} == {
        0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE",
    }  # fmt: skip

    # The study keeps what it searched: a different recipe is another study.
    with pytest.raises(ConfigError, match=re.escape("start another study with hparams_search.")):
        search(tmp_path, [*overrides, "trainer.batch_size=25"])

    # Its best trial as a preset, re-trained exactly by train.py's composition.
    preset = tmp_path / "conf" / "experiment" / "tuned_tiny.yaml"
    text = preset.read_text()
    assert text.startswith("# @package _global_\n# Written by scripts/tune.py")
    best_trial = max(ended, key=lambda t: t.value)
    header = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    assert f"trial {best_trial.number} of 4 (3 complete, 1 fail): best/val_acc" in header
    retrained = compose_config([
        *tiny_overrides(synthetic_root, tmp_path / "retrain"),
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=tuned_tiny",
    ])  # fmt: skip
    assert retrained.optimizer.lr == best_trial.params["optimizer.lr"]
    assert retrained.trainer.label_smoothing == best_trial.params["trainer.label_smoothing"]
    assert retrained.logger.experiment == "tuned_tiny"
    (tmp_path / "retrain" / "mlruns").mkdir(parents=True)
    metrics = run_training(retrained, JobContext(output_dir=tmp_path / "retrain" / "run"))
    assert metrics["best/val_acc"] == best_trial.value


@pytest.mark.slow  # two tiny searches of one epoch and three missed heartbeats, ~15 s
def test_a_trial_whose_process_died_is_run_again(tiny_cfg, synthetic_root, tmp_path):
    tiny_cfg()
    overrides = tiny_search(
        synthetic_root, tmp_path, "hparams_search.pruner.name=none", "trainer.epochs=1",
        "n_trials=1",
    )  # fmt: skip
    search(tmp_path, overrides)
    # A process that dies (SIGKILL, power loss) leaves its trial RUNNING, params drawn.
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    study = optuna.load_study(study_name="tiny", storage=storage)
    lr = optuna.distributions.FloatDistribution(USELESS_LR, 3e-2, log=True)
    dead = study.ask({"optimizer.lr": lr})
    storage.record_heartbeat(dead._trial_id)
    time.sleep(3.5)  # three heartbeats (heartbeat_s=1) missed

    search(tmp_path, [*overrides[:-1], "n_trials=2"])

    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params["optimizer.lr"] == trials[1].params["optimizer.lr"]


def test_worker_commands_get_one_thread_and_a_directory_of_their_own(tmp_path):
    argv = ["scripts/tune.py", "hparams_search=fast", "n_jobs=2", "timeout_s=600", "seed=1"]
    command = worker_command(argv, 590.0, tmp_path / "worker_0")
    assert command == [
        sys.executable, "scripts/tune.py", "hparams_search=fast", "seed=1", "n_jobs=1",
        f"hydra.run.dir={tmp_path / 'worker_0'}", "timeout_s=590.0", "device.num_threads=1",
    ]  # fmt: skip
    argv.append("device.num_threads=2")
    assert "device.num_threads=1" not in worker_command(argv, None, tmp_path)


def tune_command(data_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    conf = write_space(tmp_path, "tiny", SPACE)
    return [
        sys.executable, str(REPO_ROOT / "scripts" / "tune.py"), "--config-dir", str(conf),
        *tune_overrides(data_root, tmp_path), "hparams_search=tiny", *extra,
    ]  # fmt: skip


def test_tune_script_refuses_a_bad_search_space_in_one_line(synthetic_root, tmp_path):
    command = tune_command(synthetic_root, tmp_path, "hparams_search.params.optimizer.lr.high=0")
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines() == [
        "error: Invalid search space: hparams_search.params.optimizer.lr: the range "
        f"[{USELESS_LR}, 0] is empty or inverted (low must be < high)."
    ]
    assert not (tmp_path / "mlruns").exists()
    assert not list((tmp_path / "outputs").rglob("*"))  # nor the job dir, nor its parents


# Slow: a tune command and this process train at once, then the preset is re-trained (~1 min).
@pytest.mark.slow
def test_two_tune_processes_share_one_study_and_its_preset_retrains(
    synthetic_root, tmp_path, made_store, caplog
):
    """The command creates the study; this process joins it once a trial runs (it would
    otherwise run them all before the command has imported torch). This process may find
    every trial taken, then waits for them: that two processes run trials of one study at
    once, test_an_interrupted_search_says_so_in_one_line_per_trial waits for and checks."""
    extra = ("n_trials=4", "save_preset=true")
    log = tmp_path / "tune.log"
    with log.open("w") as out:
        tune = subprocess.Popen(
            tune_command(synthetic_root, tmp_path, *extra), cwd=REPO_ROOT, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: _running_trial_runs(tmp_path), tune, log, "no trial started")
        search(tmp_path, tiny_search(synthetic_root, tmp_path, *extra))
        assert tune.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if tune.poll() is None:  # the test failed: end the command
            tune.kill()
            tune.wait(timeout=60)
    assert "database is locked" not in log.read_text() + caplog.text

    trials = load_study(tmp_path).trials
    # Each process stops when the remaining trials run elsewhere; two may start the last
    # one at the same moment, never more.
    assert len(trials) in (4, 5)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    workers = {t.user_attrs["worker"] for t in trials}
    command, this_process = (f"{socket.gethostname()}:{pid}" for pid in (tune.pid, os.getpid()))
    assert command in workers and workers <= {command, this_process}
    _, parent, runs = study_runs(tmp_path)  # one parent, one run per trial
    assert sorted(runs) == [t.number for t in trials]
    assert parent.info.status == "FINISHED"

    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    # Re-trained in this process: train.py's --config-dir is the printed command's test's.
    retrained = compose_config([
        *tiny_overrides(synthetic_root, tmp_path), f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "experiment=tuned_tiny", "device.num_threads=1",
    ])  # fmt: skip
    run_training(retrained, JobContext(output_dir=tmp_path / "retrain"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tuned_tiny").experiment_id])
    assert run.data.metrics["best/val_acc"] == best.value
    assert run.data.params["optimizer.lr"] == str(best.params["optimizer.lr"])


def _running_trial_runs(tmp_path: Path) -> set[str]:
    return {
        run_id
        for (run_id,) in sqlite_rows(
            tmp_path / "mlruns" / "mlflow.db",
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "AND t.key = 'optuna.trial' WHERE r.status = 'RUNNING'",
        )
    }


def _trial_processes(tmp_path: Path) -> set[int]:
    """The ids of the processes running the study's trials (each trial's `worker`)."""
    rows = sqlite_rows(
        tmp_path / "mlruns" / "optuna.db",
        "SELECT value_json FROM trial_user_attributes WHERE key = 'worker'",
    )
    return {int(json.loads(value).rpartition(":")[2]) for (value,) in rows}


def _kill_when_a_trial_runs(command: list[str], tmp_path: Path) -> set[str]:
    """Start the search (n_jobs=1: its trials run in its own process) and SIGKILL it once a
    trial has an open MLflow run; the runs left RUNNING."""
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        tuner = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _running_trial_runs(tmp_path), tuner, log, "no trial started")
    finally:
        tuner.kill()
        tuner.wait(timeout=60)
    return _running_trial_runs(tmp_path)


# Slow: a search killed mid-trial, then the same search in two workers (~1 min on 2 cores).
@pytest.mark.slow
def test_a_hard_killed_search_run_again_in_workers_ends_the_run_it_left(
    synthetic_root, tmp_path, made_store, monkeypatch
):
    """Also the n_jobs workers' own checks on a search they complete: each trains with one
    torch thread, and the command that started them sums the study up (that both run trials
    of the one study at once: test_an_interrupted_search_says_so_in_one_line_per_trial)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # tune sets one, not tests/__init__
    command = tune_command(
        synthetic_root, tmp_path, "n_trials=2", "hparams_search.pruner.name=none",
        "trainer.epochs=6", "save_preset=true",
    )  # fmt: skip
    command.remove("device.num_threads=1")  # the workers' own default
    killed = _kill_when_a_trial_runs(command, tmp_path)
    assert len(killed) == 1, "the kill left no run RUNNING: nothing to test"

    resumed = subprocess.run([*command, "n_jobs=2"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    _, parent, runs = study_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    run = runs[0]  # the killed trial's run: ended, as its trial was
    assert run.info.run_id in killed
    assert (run.info.status, run.data.tags["optuna.state"]) == ("FAILED", "FAIL")
    assert run.info.end_time is not None
    assert {r.info.status for n, r in runs.items() if n > 0} == {"FINISHED"}
    assert {r.data.tags["torch.num_threads"] for n, r in runs.items() if n > 0} == {"1"}
    assert (parent.data.metrics["trials/complete"], parent.data.metrics["trials/fail"]) == (2, 1)
    assert (tmp_path / "conf" / "experiment" / "tuned_tiny.yaml").is_file()


# Slow: the command and its two workers each import torch and MLflow (~30 s).
@pytest.mark.slow
def test_an_interrupted_search_says_so_in_one_line_per_trial(
    synthetic_root, tmp_path, made_store, monkeypatch
):
    """Each interrupted trial printed Optuna's 17-line traceback of a failed trial, naming
    the trial's own trainer.resume=, and each worker a "stopped:" line of its own. With
    n_jobs=2: the workers run their trials as n_jobs=1 does, and the command that started them
    stops as n_jobs=1 does (test_an_interrupted_study_resumes... checks its log in-process).
    Also: the two workers run trials of the one study at once, each with one torch thread."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # tune sets one, not tests/__init__
    n_jobs, signum = 2, signal.SIGTERM
    command = tune_command(
        synthetic_root, tmp_path, f"n_jobs={n_jobs}", "n_trials=4",
        "hparams_search.pruner.name=none", "trainer.epochs=1000",
    )  # fmt: skip
    command.remove("device.num_threads=1")  # the workers' own default
    log = tmp_path / "tune.log"
    with log.open("w") as out:
        tuner = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(_running_trial_runs(tmp_path)) >= n_jobs, tuner, log,
                   "the trials did not start")  # fmt: skip
        tuner.send_signal(signum)
        assert tuner.wait(timeout=300) == 130, log.read_text()[-3000:]
    finally:
        if tuner.poll() is None:  # the test failed: end the search and its workers
            for pid in {tuner.pid, *_trial_processes(tmp_path)}:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    output = log.read_text()
    assert "Traceback" not in output
    assert "trainer.resume" not in output
    lines = output.splitlines()
    trials = [line for line in lines if re.search(r"Trial \d+ interrupted; it runs again", line)]
    assert len(trials) == n_jobs, output[-3000:]
    assert [line for line in lines if line.startswith("stopped:")] == [
        "stopped: search interrupted; run the same command again to continue study 'tiny'"
    ]
    trials = load_study(tmp_path).trials
    assert Counter(t.state for t in trials) == {TrialState.FAIL: n_jobs, TrialState.WAITING: n_jobs}
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len({t.user_attrs["worker"] for t in interrupted}) == n_jobs
    _, _, runs = study_runs(tmp_path)
    assert {runs[t.number].data.tags["torch.num_threads"] for t in interrupted} == {"1"}
