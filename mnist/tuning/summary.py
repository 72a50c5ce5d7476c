"""A study summed up in its MLflow parent run when a tune command ends: trial counts, what
pruning saved, Optuna's plots, and the best trial as an experiment preset, tuned_<study>.yaml
(its recipe plus the best parameters: `scripts/train.py experiment=tuned_<study>`)."""

from __future__ import annotations

import logging
import shutil
import statistics
import textwrap
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from mnist.atomic import written_atomically
from mnist.paths import REPO_ROOT
from mnist.reporting.plots import pyplot
from mnist.tracking.sweep_runs import end_study_run
from mnist.tuning.space import override_text, parse_space
from mnist.tuning.study import counts

log = logging.getLogger(__name__)


def saved_preset(cfg: DictConfig) -> Path | None:
    """Where save_preset=true copies the preset; None when not asked (a command never
    replaces a file under version control on its own)."""
    if not cfg.save_preset:
        return None
    return Path(cfg.preset_dir) / f"tuned_{cfg.hparams_search.study}.yaml"


def preset_config(name: str, overrides: list[str], groups: set[str]) -> dict[str, Any]:
    """Overrides as an experiment file: groups' options in `defaults`, other keys nested."""
    base, chosen, values = [], [], OmegaConf.create()
    for override in OverridesParser.create().parse_overrides(overrides):
        key, value = override.key_or_group, override.value()
        if key == "experiment":
            base.append(value)
        elif key in groups:
            chosen.append({f"override /{key}": value})
        else:
            OmegaConf.update(values, key, value, force_add=True)
    config: dict[str, Any] = {"defaults": [*base, *chosen]} if base or chosen else {}
    config |= OmegaConf.to_container(values)
    config.setdefault("logger", {})["experiment"] = name
    config["hydra"] = {"sweeper": {"params": {"seed": "0,1,2"}}}
    return config


def write_best_preset(cfg: DictConfig, ctx: Any, study: optuna.Study, url: str) -> Path:
    """<output dir>/experiment/search/tuned_<study>.yaml. `ctx`: a SearchContext; `url`:
    the study's storage."""
    best, name = study.best_trial, f"tuned_{study.study_name}"
    by_path = {p.path: p for p in parse_space(cfg.hparams_search.params)}
    params = [f"{k}={override_text(by_path[k].value(v))}" for k, v in best.params.items()]
    # Hydra looks in conf/ before any --config-dir: under its own name, a committed preset of
    # the study (conf/experiment/tuned_fast.yaml) would be trained instead.
    option = f"search/{name}"
    db = Path(url.removeprefix("sqlite:///"))
    states = Counter(t.state.name.lower() for t in study.trials)
    provenance = textwrap.fill(
        f"Written by scripts/tune.py: the best trial of study {study.study_name!r} in "
        f"{db.relative_to(REPO_ROOT) if db.is_relative_to(REPO_ROOT) else url}, "
        f"trial {best.number} of {len(study.trials)} "
        f"({', '.join(f'{n} {state}' for state, n in sorted(states.items()))}): "
        f"best/val_acc {best.value:.6g} on the validation split (the test set chose nothing).",
        width=90,
    )
    comment = (
        f"{provenance}\nRe-train: python scripts/train.py experiment={name}  (-m: seeds 0, 1, 2)"
        "\nas saved in conf/experiment/; from the search's output directory or its parent run's"
        f"\nartifacts: python scripts/train.py --config-dir <that folder> experiment={option}"
    )
    header = "\n".join(f"# {line}".rstrip() for line in comment.splitlines())
    config = preset_config(name, [*study.user_attrs["recipe_overrides"], *params], ctx.groups)
    path = ctx.output_dir / "experiment" / f"{option}.yaml"
    with written_atomically(path) as staged:
        staged.write_text(f"# @package _global_\n{header}\n{OmegaConf.to_yaml(config)}")
    log.info(
        "Best trial %d: val acc %.4f with %s -> %s\nRe-train it: python scripts/train.py "
        "--config-dir %s experiment=%s  (save_preset=true saves it in %s)",
        best.number, best.value, " ".join(params), path, ctx.output_dir, option, cfg.preset_dir,
    )  # fmt: skip
    return path


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
