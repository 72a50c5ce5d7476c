"""Re-run a logged run from its own config and compare the two runs metric by metric: the
check behind "bit-reproducible on CPU"."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mnist.config import as_now, validate_config
from mnist.context import JobContext
from mnist.errors import ConfigError
from mnist.targets import first_line, stored_config
from mnist.tracking import queries, runs, store
from mnist.tracking.params import GROUPS
from mnist.training.phases import PHASE_PREFIX

log = logging.getLogger(__name__)

# Wall-clock measurements differ between any two runs; they are not part of the verdict.
TIMING_METRICS = {"epoch_time_s", "throughput_img_s", "train_time_s", "time_to_target_s",
                  "test/eval_time_s"}  # fmt: skip
WEIGHTS_TAG = "best.weights_sha256"


def is_timing(name: str) -> bool:
    return name in TIMING_METRICS or name.startswith(PHASE_PREFIX)  # or a job's phase


class Comparison(NamedTuple):
    name: str
    original: float | str
    reproduced: float | str | None

    def matches(self, tolerance: float) -> bool:
        if isinstance(self.original, float) and isinstance(self.reproduced, float):
            return math.isclose(self.original, self.reproduced, rel_tol=0, abs_tol=tolerance)
        return self.original == self.reproduced


def compare_runs(uri: str, original_id: str, reproduced_id: str) -> list[Comparison]:
    """Every non-timing metric, epoch by epoch, and the hash of the best weights."""
    client = store.client(uri)
    original, reproduced = client.get_run(original_id), client.get_run(reproduced_id)
    rows = []
    for name in sorted(name for name in original.data.metrics if not is_timing(name)):
        values = queries.metric_history(uri, original_id, name)
        reproduced_values = queries.metric_history(uri, reproduced_id, name)
        for step, value in enumerate(values):
            other = reproduced_values[step] if step < len(reproduced_values) else None
            label = name if len(values) == 1 else f"{name}[{step + 1}]"
            rows.append(Comparison(label, value, other))
        if len(reproduced_values) > len(values):
            rows.append(Comparison(f"{name} (extra steps)", "none", "present"))
    weights = original.data.tags.get(WEIGHTS_TAG, "missing"), reproduced.data.tags.get(WEIGHTS_TAG)
    rows.append(Comparison(WEIGHTS_TAG, *weights))
    return rows


def counts(row: Comparison, tolerance: float) -> bool:
    """With a tolerance (GPU kernels) equal metrics need not come from bit-identical
    weights, so their hash is only information."""
    return tolerance == 0 or row.name != WEIGHTS_TAG


def passes(rows: list[Comparison], tolerance: float) -> bool:
    return all(row.matches(tolerance) for row in rows if counts(row, tolerance))


def reproduce(
    cfg: DictConfig, output_dir: Path, train: Callable[[DictConfig, JobContext], dict[str, Any]]
) -> bool:
    """Re-run `cfg.run_id` with `train` (run_training) as a run tagged `reproduced_from`: whether
    every metric matched within `cfg.tolerance`."""
    run_id, tolerance = cfg.run_id, cfg.tolerance
    uri = store.tracking_uri(cfg.tracking_uri, cfg.paths.mlruns)
    store.check_store(uri)
    source, text = queries.run_config(uri, run_id)
    # Whoever can write to the store wrote this config: nothing of it is built unchecked.
    run_cfg = stored_config(text, f"run_id={run_id} (its config.yaml)")
    try:
        run_cfg.logger.tracking_uri = uri
        run_cfg.logger.run_name = f"reproduce: {source.info.run_name}"
        run_cfg = as_now(run_cfg)
        validate_config(run_cfg)
    except (OmegaConfBaseException, AttributeError, KeyError, TypeError) as e:
        raise ConfigError(
            f"run_id={run_id}: its config.yaml is incomplete or invalid ({first_line(e)})"
        ) from e
    tags = source.data.tags
    commit, dirty = runs.git_state()
    if tags.get("git.commit") != commit:
        log.warning("The run was made at commit %s; this checkout is at %s",
                    tags.get("git.commit"), commit)  # fmt: skip
    if dirty != "false":
        log.warning("The working tree has uncommitted changes: the code may differ from the run's")
    choices = {k: v for k, v in source.data.params.items() if k in GROUPS}
    ctx = JobContext(
        output_dir=output_dir,
        overrides=tags.get("hydra.overrides", "").split(),
        choices={**choices, "model": tags.get("model", "")},
        extra_tags={"reproduced_from": run_id},
    )
    result = train(run_cfg, ctx)
    rows = compare_runs(uri, run_id, result["run_id"])
    print(f"{'metric':<24} {'original':>16} {'reproduced':>16}  verdict")
    for row in rows:
        verdict = "ok" if row.matches(tolerance) else "DIFFERS"
        if not counts(row, tolerance):
            verdict = f"{'same' if row.matches(tolerance) else 'differs'} (information only)"
        original, copy = (f"{v:.6g}" if isinstance(v, float) else str(v)[:16] for v in row[1:])
        print(f"{row.name:<24} {original:>16} {copy:>16}  {verdict}")
    passed = passes(rows, tolerance)
    print(f"{'PASS' if passed else 'FAIL'}: run {result['run_id']} reproduces {run_id}"
          f"{'' if passed else ' NOT'} within tolerance {tolerance:g}")  # fmt: skip
    return passed
