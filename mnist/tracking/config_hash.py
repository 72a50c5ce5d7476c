"""The identity of what a run computes: a SHA-256 of its resolved config without the keys
that cannot change its numbers. Logged as the `config.sha256` tag of every training run, it
is how a resumed sweep recognises a job it already ran (mnist/sweeps/resume.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig

from mnist.tracking.params import result_values

CONFIG_HASH_TAG = "config.sha256"


def config_sha256(cfg: DictConfig | dict[str, Any]) -> str:
    """Hex digest of the resolved config, independent of key order, without the keys the
    run's params leave out too (mnist/tracking/params.py, NOT_COMPARED): where it reads and
    writes (paths, data.root), how it is recorded (logger), the progress bar, how it was
    started (trainer.resume: a resumed run computes what an uninterrupted one does;
    sweep.resume) and settings of speed only (eval batch size, allocator tuning, checksum
    verification). Everything else counts, Hydra's `_target_` included (two models may share
    their arguments), and so do keys whose effect on the numbers is doubtful
    (device.num_threads): a job is matched only when nothing that might matter changed. A
    key added since runs were stored counts only away from its old behaviour (ADDED_KEYS)."""
    kept = result_values(cfg)
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
