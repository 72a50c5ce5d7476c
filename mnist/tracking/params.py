"""A training run's MLflow params: what makes its result differ from another run's, in the
form the UI compares and searches (`params.model = "fast"`). The whole resolved config
stays the run's config.yaml artifact; params leave out where a run wrote, how it
reported, and Hydra's internals. And the identity of what a run computes, a SHA-256 of
the same values: logged as the `config.sha256` tag of every training run, it is how a
resumed sweep recognises a job it already ran (mnist/sweeps/resume.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig

from mnist.config import ADDED_KEYS, flatten

# Config groups whose chosen option is a param of its own, e.g. model=fast.
GROUPS = ("model", "optimizer", "scheduler", "augmentation", "device", "experiment")
# Keys (or key prefixes ending in ".") that change where or how a run is recorded, how it
# was started (a resumed run computes what an uninterrupted one does; sweep.resume), or
# only its speed, never its numbers. Also what the config.sha256 tag leaves out.
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
    # Hydra's own overrides (hydra.launcher.n_jobs=2, hydra/launcher=joblib): how jobs ran.
    "hydra.",
    "hydra/",
)
# Hydra's instructions to instantiate: the group's option says the same in a word.
HYDRA_KEYS = ("_target_", "_partial_")
CONFIG_HASH_TAG = "config.sha256"


def changes_results(key: str) -> bool:
    """Whether a flattened config key can change a run's numbers (NOT_COMPARED: cannot)."""
    return not any(
        key == name or (name.endswith(".") and key.startswith(name)) for name in NOT_COMPARED
    )


def result_values(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The flattened config values that can change a run's numbers, without a key added
    since runs were stored while it holds the value that trains as before (ADDED_KEYS)."""
    return {
        key: value
        for key, value in flatten(cfg).items()
        if changes_results(key) and not (key in ADDED_KEYS and value == ADDED_KEYS[key])
    }


def run_params(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """The option of each config group (`model`, `optimizer`, ...), then every config value
    that can change the run's numbers, flattened (`trainer.epochs`, `model.dropout`)."""
    groups = {group: choices[group] for group in GROUPS if group in choices}
    # An empty section (augmentation=none) flattens to {}: its group's option says it.
    values = {
        k: v
        for k, v in result_values(cfg).items()
        if k.rsplit(".", 1)[-1] not in HYDRA_KEYS and k not in groups
    }
    for group, option in groups.items():
        # A group's `name` repeats its option, unless set on its own (scheduler.name=step).
        if values.get(f"{group}.name") == option:
            del values[f"{group}.name"]
    return {**groups, **values}


def config_sha256(cfg: DictConfig | dict[str, Any]) -> str:
    """Hex digest of the resolved config, independent of key order, without the keys the
    run's params leave out too (NOT_COMPARED): where it reads and writes (paths, data.root),
    how it is recorded (logger), the progress bar, how it was started (trainer.resume: a
    resumed run computes what an uninterrupted one does; sweep.resume) and settings of
    speed only (eval batch size, allocator tuning, checksum verification). Everything else
    counts, Hydra's `_target_` included (two models may share their arguments), and so do
    keys whose effect on the numbers is doubtful (device.num_threads): a job is matched
    only when nothing that might matter changed. A key added since runs were stored counts
    only away from its old behaviour (ADDED_KEYS)."""
    kept = result_values(cfg)
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
