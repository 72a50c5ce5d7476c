"""A study summed up in its MLflow parent run when a tune command ends: trial counts, what
pruning saved, Optuna's plots and the best trial's preset."""

from __future__ import annotations

import logging
import shutil
import statistics
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from mnist.atomic import written_atomically
from mnist.reporting.plots import pyplot
from mnist.tracking.study_runs import end_study_run
from mnist.tuning.preset import saved_preset, write_best_preset
from mnist.tuning.space import override_text
from mnist.tuning.study import counts

log = logging.getLogger(__name__)


def pruning_savings(trials: list[FrozenTrial]) -> dict[str, float]:
    """Epochs and seconds the pruned trials did not run: each one's epochs left times its
    own mean epoch time."""
    ran = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    times = {t.number: t.user_attrs.get("epoch_times_s", []) for t in ran}
    pruned = [t for t in ran if t.state == TrialState.PRUNED and times[t.number]]
    left = {t.number: t.user_attrs["epochs"] - len(times[t.number]) for t in pruned}
    return {
        "trials/epochs_run": sum(len(t) for t in times.values()),
        "trials/epoch_time_s": sum(sum(t) for t in times.values()),
        "pruning/epochs_saved": sum(left.values()),
        "pruning/time_saved_s": sum(n * statistics.fmean(times[k]) for k, n in left.items()),
    }


def _plots(study: optuna.Study, output_dir: Path) -> list[Path]:
    """Optuna's plots; importances by PED-ANOVA (no scikit-learn), from two complete trials."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as optuna_plots

    plt = pyplot()
    names = ["optimization_history", "intermediate_values"]
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        names.append("param_importances")
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        kwargs = {"evaluator": PedAnovaImportanceEvaluator()} if name == "param_importances" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure = getattr(optuna_plots, f"plot_{name}")(study, **kwargs).figure
        figure.tight_layout()
        figure.savefig(output_dir / f"{name}.png", dpi=120)
        plt.close(figure)
    return [output_dir / f"{name}.png" for name in names]


def summarize(
    cfg: DictConfig,
    ctx: Any,
    study: optuna.Study,
    stores: tuple[str, str],
    parent: str,
    status: str,
) -> None:
    """The best trial's preset written (and saved when asked), the parent run brought up to
    date and ended. `ctx`: a SearchContext; `stores`: (MLflow URI, study storage URL)."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name.lower() for t in trials)
    metrics = {f"trials/{state}": float(states[state]) for state in ("complete", "pruned", "fail")}
    metrics |= pruning_savings(trials)
    artifacts: dict[Path, str | None] = dict.fromkeys(_plots(study, ctx.output_dir))
    tags, preset = {}, None
    if states["complete"]:
        best = study.best_trial
        metrics |= {"best/val_acc": best.value, "best/trial": float(best.number)}
        tags = {f"best.{key}": override_text(value) for key, value in best.params.items()}
        preset = write_best_preset(cfg, ctx, study, stores[1])
        artifacts[preset] = str(preset.parent.relative_to(ctx.output_dir))
    trial_states = {t.number: t.state.name for t in trials}
    hint = end_study_run(stores[0], parent, status, metrics, tags, artifacts, trial_states)
    ended, running = counts(study)
    log.info(
        "Study %r: %d trials ended (%d complete, %d pruned, %d failed), %d running elsewhere; "
        "pruning saved %d epochs (~%.0f s of training)",
        study.study_name, ended, states["complete"], states["pruned"], states["fail"], running,
        metrics["pruning/epochs_saved"], metrics["pruning/time_saved_s"],
    )  # fmt: skip
    if preset is not None and (saved := saved_preset(cfg)) is not None:
        with written_atomically(saved) as staged:
            shutil.copyfile(preset, staged)
        log.info("Preset saved as %s: python scripts/train.py experiment=%s", saved, saved.stem)
    if hint:
        log.info("Compare the trials: %s", hint)
