"""A run's MLflow params: what can make its result differ (the whole config is its config.yaml
artifact), and config.sha256, by which a resumed sweep recognises a job it already ran."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig

from mnist.config import ADDED_KEYS, flatten

GROUPS = ("model", "optimizer", "scheduler", "augmentation", "device", "experiment")
# Keys (or prefixes ending in ".") that change where or how a run is recorded or started, or
# only its speed, never its numbers.
NOT_COMPARED = (
    "paths.",
    "logger.",
    "data.root",
    "data.verify_checksums",
    "trainer.progress",
    "trainer.resume",
    "trainer.eval_batch_size",
    "device.malloc_tuning",
    "sweep.",
    "hydra.",
    "hydra/",
)
CONFIG_HASH_TAG = "config.sha256"


def changes_results(key: str) -> bool:
    return not any(
        key == name or (name.endswith(".") and key.startswith(name)) for name in NOT_COMPARED
    )


def result_values(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A key added since runs were stored only away from the value that trains as before."""
    return {
        key: value
        for key, value in flatten(cfg).items()
        if changes_results(key) and not (key in ADDED_KEYS and value == ADDED_KEYS[key])
    }


def run_params(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    groups = {group: choices[group] for group in GROUPS if group in choices}
    # Hydra's `_target_` and an empty section (augmentation=none, flattened to {}): the
    # group's option says the same in a word.
    values = {
        k: v
        for k, v in result_values(cfg).items()
        if k.rsplit(".", 1)[-1] not in ("_target_", "_partial_") and k not in groups
    }
    for group, option in groups.items():
        # A group's `name` repeats its option, unless set on its own (scheduler.name=step).
        if values.get(f"{group}.name") == option:
            del values[f"{group}.name"]
    return {**groups, **values}


def config_sha256(cfg: DictConfig | dict[str, Any]) -> str:
    """`_target_` counts (two models may share their arguments), and so do keys of doubtful
    effect: a job is matched only when nothing that might matter changed."""
    text = json.dumps(result_values(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
