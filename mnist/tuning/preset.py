"""The result of a study kept as an experiment preset, conf/experiment/tuned_<study>.yaml:
the overrides the study's trials shared plus the best trial's parameters, and nothing else,
so that `python scripts/train.py experiment=tuned_<study>` trains that trial's config again
(with `-m`, over three seeds). A file to review and commit, like the other presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mnist.atomic import written_atomically

SEEDS = "0,1,2"


def preset_config(name: str, overrides: list[str], groups: set[str]) -> dict[str, Any]:
    """Overrides as an experiment file: a config group's option in `defaults` (an
    experiment= base first), every other key nested."""
    base: list[Any] = []
    chosen: list[Any] = []
    values: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key, value = override.key_or_group, override.value()
        if key == "experiment":
            base.append(value)
        elif key in groups:
            chosen.append({f"override /{key}": value})
        else:
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    config: dict[str, Any] = {"defaults": [*base, *chosen]} if base or chosen else {}
    config |= values
    config.setdefault("logger", {})["experiment"] = name
    config["hydra"] = {"sweeper": {"params": {"seed": SEEDS}}}
    return config


def write_preset(path: Path, overrides: list[str], groups: set[str], comment: str) -> Path:
    """`comment`: what produced the preset (study, trial, value), as its header."""
    config = preset_config(path.stem, overrides, groups)
    header = "\n".join(f"# {line}".rstrip() for line in comment.splitlines())
    text = f"# @package _global_\n{header}\n{OmegaConf.to_yaml(config)}"
    with written_atomically(path) as staged:
        staged.write_text(text)
    return path
