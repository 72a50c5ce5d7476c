"""A study in MLflow: one parent run (the search space, sampler and pruner as params; the
best value, the trial counts and what pruning saved as metrics; the best parameters as tags,
as they change while a study is resumed and MLflow params cannot; Optuna's plots and the
best trial's preset as artifacts) whose children are the trials' training runs, each tagged
with its trial's number and state, and none left RUNNING once its trial has ended."""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist.config import flatten
from mnist.reporting.plots import pyplot
from mnist.tracking.parent import children, end_parent, open_parent, reopen_parent
from mnist.tracking.runs import git_state
from mnist.tracking.store import get_or_create_experiment, retry_when_locked
from mnist.tracking.ui import experiment_tags, how_to_open, show_children
from mnist.tuning.space import Param, override_text

log = logging.getLogger(__name__)


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def create_parent_run(
    uri: str,
    experiment: str,
    study: str,
    storage: str,
    space: list[Param],
    search: dict[str, Any],
    recipe: list[str],
) -> str:
    """The study's run; `search`: the hparams_search config (sampler, pruner)."""
    client = _client(uri)
    experiment_id = retry_when_locked(
        lambda: get_or_create_experiment(uri, experiment, experiment_tags)
    )
    commit, dirty = git_state()
    tags = {
        "optuna.study": study,
        "optuna.storage": storage,
        "hydra.overrides": " ".join(recipe),
        "git.commit": commit,
        "git.dirty": dirty,
    }
    params = {f"search.{p.path}": p.describe() for p in space}
    params |= flatten({"sampler": search["sampler"], "pruner": search["pruner"]})
    params |= {"study": study, "storage": storage}
    return open_parent(client, experiment_id, f"study {study}", tags, params)


def how_to_open_trials(uri: str, run_id: str) -> str | None:
    """How to open the study's trials in the MLflow UI: their own view, saved here."""
    client = _client(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    return how_to_open(uri, show_children(client, experiment_id, run_id))


def reopen_parent_run(uri: str, run_id: str) -> None:
    reopen_parent(_client(uri), run_id)


def pruning_savings(trials: list[FrozenTrial]) -> dict[str, float]:
    """Epochs and seconds of training the pruned trials did not run: for each, the epochs
    it had left times its own mean epoch time (an estimate: the time those epochs would
    have taken had the trial gone on)."""
    ran = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    epochs_run = sum(len(t.user_attrs.get("epoch_times_s", [])) for t in ran)
    seconds_run = sum(sum(t.user_attrs.get("epoch_times_s", [])) for t in ran)
    epochs_saved, seconds_saved = 0, 0.0
    for trial in ran:
        times = trial.user_attrs.get("epoch_times_s", [])
        if trial.state == TrialState.PRUNED and times:
            left = trial.user_attrs["epochs"] - len(times)
            epochs_saved += left
            seconds_saved += left * statistics.fmean(times)
    return {
        "trials/epochs_run": epochs_run,
        "trials/epoch_time_s": seconds_run,
        "pruning/epochs_saved": epochs_saved,
        "pruning/time_saved_s": seconds_saved,
    }


def _plots(study: optuna.Study, output_dir: Path) -> list[Path]:
    """Optimisation history, intermediate values (what the pruner saw) and parameter
    importances (PED-ANOVA: needs no scikit-learn; at least two complete trials)."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as optuna_plots

    plt = pyplot()
    figures = {
        "optimization_history.png": lambda: optuna_plots.plot_optimization_history(study),
        "intermediate_values.png": lambda: optuna_plots.plot_intermediate_values(study),
    }
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2:
        figures["param_importances.png"] = lambda: optuna_plots.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator()
        )
    written = []
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in figures.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = draw()
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.tight_layout()
        figure.savefig(output_dir / name, dpi=120)
        plt.close(figure)
        written.append(output_dir / name)
    return written


def _sync_trial_runs(client: Any, run_id: str, experiment_id: str, study: optuna.Study) -> None:
    """Each trial's run gets its trial's state from the study, the one source of truth:
    states change after a run ends (a process that died leaves its trial to be failed
    by the heartbeat). A run still RUNNING whose trial has ended lost its process (SIGKILL,
    power loss) before it could end the run: it is ended FAILED here."""
    states = {str(t.number): t.state for t in study.get_trials(deepcopy=False)}
    for child in children(client, experiment_id, run_id):
        state = states.get(child.data.tags.get("optuna.trial", ""))
        if state is None:
            continue
        if child.data.tags.get("optuna.state") != state.name:
            retry_when_locked(
                lambda c=child, s=state: client.set_tag(c.info.run_id, "optuna.state", s.name)
            )
        if child.info.status == "RUNNING" and state.is_finished():
            retry_when_locked(lambda c=child: client.set_terminated(c.info.run_id, "FAILED"))


def finish_parent_run(
    uri: str, run_id: str, study: optuna.Study, output_dir: Path, status: str, preset: Path | None
) -> dict[str, float]:
    """Log where the study stands (and `preset`, the best trial's, where it lies under
    `output_dir`: `--config-dir` on the downloaded artifacts finds it) and end the parent
    run with `status`; returns the metrics logged."""
    from mlflow.entities import Metric, RunTag

    client = _client(uri)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    metrics = {f"trials/{state}": float(states[state]) for state in ("complete", "pruned", "fail")}
    metrics |= pruning_savings(trials)
    tags: dict[str, str] = {}
    if states["complete"]:
        best = study.best_trial
        metrics |= {"best/val_acc": best.value, "best/trial": float(best.number)}
        tags = {f"best.{key}": override_text(value) for key, value in best.params.items()}
    now = int(time.time() * 1000)
    retry_when_locked(
        lambda: client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, len(trials)) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
    )
    for path in _plots(study, output_dir):
        retry_when_locked(lambda p=path: client.log_artifact(run_id, str(p)))
    if preset is not None:
        folder = str(preset.parent.relative_to(output_dir))
        retry_when_locked(lambda: client.log_artifact(run_id, str(preset), folder))
    experiment_id = client.get_run(run_id).info.experiment_id
    _sync_trial_runs(client, run_id, experiment_id, study)
    end_parent(client, run_id, status)
    return metrics
