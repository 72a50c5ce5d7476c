"""The sweep's summary on its parent run: the comparison of its runs
(mnist/reporting/compare.py) as artifacts and description, and each row's mean ± std as
metrics."""

from __future__ import annotations

import logging
import re
import statistics
import time
from pathlib import Path

from omegaconf import OmegaConf

from mnist.paths import REPO_ROOT
from mnist.reporting.compare import search_filter, write_comparison
from mnist.reporting.table import Row

log = logging.getLogger(__name__)

# MLflow keeps tag values (a run's description) of up to 8000 characters.
MAX_DESCRIPTION = 8000


def _metric_label(row: Row) -> str:
    """A row's name as MLflow metric names allow it ("fast", "fast adamw")."""
    return re.sub(r"[^\w./ -]", "_", " ".join([row.model, *row.groups.values()]))


def summary_metrics(rows: list[Row]) -> dict[str, float]:
    """Each row's mean (and, over 2 runs or more, sample std) of the key metrics, e.g.
    fast/test/acc_mean, fast/test/acc_std."""
    metrics = {}
    for row in rows:
        for name, values in (("test/acc", row.checkpoint_acc), ("best/val_acc", row.val_acc),
                             ("train_time_s", row.train_time_s)):  # fmt: skip
            if values:
                metrics[f"{_metric_label(row)}/{name}_mean"] = statistics.fmean(values)
            if len(values) > 1:
                metrics[f"{_metric_label(row)}/{name}_std"] = statistics.stdev(values)
    return metrics


def summarize_sweep(uri: str, experiment_id: str, parent_run_id: str, output_dir: Path) -> None:
    """Makes the parent run the sweep's summary: its comparison (one row per model and
    value of every swept key but the seed) as artifacts and description, and each row's
    mean ± std as metrics. A sweep whose summary fails still ends: it is only logged."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment(experiment_id).name
        swept = client.get_run(parent_run_id).data.params
        group_by = [key for key in swept if key not in ("model", "seed")]
        references = OmegaConf.to_container(
            OmegaConf.load(REPO_ROOT / "conf" / "compare.yaml").references
        )
        rows, paths, markdown = write_comparison(
            client, experiment, search_filter(parent_run_id, None), group_by, references,
            output_dir, parent_run_id,
        )  # fmt: skip
        # The table itself, without its notes: which model won, at the end of the sweep.
        log.info("%s", markdown.split("\n\n")[1])
        for path in paths:
            client.log_artifact(parent_run_id, str(path))
        timestamp = int(1000 * time.time())
        metrics = [Metric(k, v, timestamp, 0) for k, v in summary_metrics(rows).items()]
        client.log_batch(parent_run_id, metrics=metrics)
        if len(markdown) <= MAX_DESCRIPTION:
            client.set_tag(parent_run_id, "mlflow.note.content", markdown)
    except Exception as e:  # the parent must still end with its status
        log.warning("The sweep's summary could not be made: %s", e)
