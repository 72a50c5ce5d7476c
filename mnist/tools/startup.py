"""The start-up benchmark: a training command run as a fresh process, timed from outside and
split into the phases the run logged (time/<phase>_s), so the fixed cost shows where it goes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mnist.errors import ConfigError
from mnist.overrides import override_key
from mnist.paths import REPO_ROOT
from mnist.tracking import queries, runs, store
from mnist.training.phases import LAUNCHED_AT_ENV, PHASES, phase_metric

# The benchmark finds the run by these (a name of its own: benchmarks at once each find theirs).
OWN_KEYS = ("logger.tracking_uri", "logger.experiment", "logger.run_name")


def run_command(overrides: list[str], uri: str, experiment: str) -> tuple[float, Any]:
    """(wall seconds, the MLflow run) of scripts/train.py with `overrides`."""
    if owned := [o for o in overrides if override_key(o) in OWN_KEYS]:
        raise ConfigError(
            f"startup.command sets {owned[0]}; the benchmark sets {', '.join(OWN_KEYS)} itself "
            "(set the store and experiment on the benchmark's command line instead)"
        )
    name = f"startup-{uuid.uuid4().hex[:12]}"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *overrides,
               f"logger.tracking_uri={uri}", f"logger.experiment={experiment}",
               f"logger.run_name={name}"]  # fmt: skip
    start = time.perf_counter()
    env = {**os.environ, LAUNCHED_AT_ENV: repr(time.time())}
    returncode = subprocess.run(command, env=env).returncode
    wall = time.perf_counter() - start
    if returncode:
        raise ConfigError(f"the training command failed (exit {returncode}); see its output above")
    found = queries.search_runs(
        uri, queries.experiment_id(uri, experiment), f"tags.`mlflow.runName` = '{name}'"
    )
    if len(found) != 1:
        raise ConfigError(f"the training command made {len(found)} runs, not one (a sweep?)")
    return wall, found[0]


def startup(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    """Each phase, the rest (closing the run, exit), wall, train_time_s and the fixed cost."""
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    store.check_store(uri)
    overrides = list(cfg.startup.command)
    wall, run = run_command(overrides, uri, cfg.logger.experiment)
    metrics = run.data.metrics
    seconds = {p: metrics[phase_metric(p)] for p in PHASES if phase_metric(p) in metrics}
    numbers = {
        **seconds,
        "other": wall - sum(seconds.values()),
        "wall": wall,
        "train_time": metrics["train_time_s"],
        "fixed_cost": wall - metrics["train_time_s"],
    }
    lines = [f"python scripts/train.py {' '.join(overrides)}: run {run.info.run_id}\n",
             "| phase | seconds | share of wall |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {name} | {value:.2f} | {value / wall:.0%} |" for name, value in numbers.items()]
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "startup.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    runs.log_run(uri, cfg.logger.experiment, "startup", {"training_run": run.info.run_id},
                 {"command": " ".join(overrides)},
                 {f"startup/{name}_s": value for name, value in numbers.items()}, [path],
                 "the start-up times")  # fmt: skip
    return numbers
