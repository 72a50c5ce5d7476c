"""The identity of what a run computes: a SHA-256 of its resolved config without the keys
that cannot change its results. Logged as the `config.sha256` tag of every training run, it
is how a resumed sweep recognises a job it already ran (mnist/tracking/sweep_resume.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_HASH_TAG = "config.sha256"

# Left out of the hash, each because the same run gives the same results whatever its value:
#   paths, data.root  where files are read and written (another checkout, another disk);
#   logger            where and how the run is recorded (store, experiment, run name,
#                     model logging, TensorBoard), not what it computes;
#   trainer.progress  the progress bar;
#   trainer.resume    how the run was started: a resumed run computes what an uninterrupted
#                     one does (tests/test_reproducibility.py);
#   sweep             how the sweep was started (sweep.resume).
# Everything else counts, including keys whose effect on the numbers is doubtful (such as
# device.num_threads): a job is matched only when nothing that might matter changed.
EXCLUDED_KEYS = ("paths", "data.root", "logger", "trainer.progress", "trainer.resume", "sweep")


def config_sha256(cfg: DictConfig | dict[str, Any]) -> str:
    """Hex digest of the resolved config minus EXCLUDED_KEYS, independent of key order."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    kept = json.loads(json.dumps(container))  # a deep copy to prune
    for dotted in EXCLUDED_KEYS:
        *parents, last = dotted.split(".")
        node = kept
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
