"""A study's result as an experiment preset, tuned_<study>.yaml: its recipe plus the best
trial's parameters, so that `scripts/train.py experiment=tuned_<study>` trains it again."""

from __future__ import annotations

import logging
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from mnist.atomic import written_atomically
from mnist.paths import REPO_ROOT
from mnist.tuning.space import override_text, parse_space

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
