"""The sweep's summary on its parent run: the comparison of its runs
(mnist/reporting/compare.py) as artifacts and description, and each row's mean ± std as
metrics under summary/ (MLflow's charts make a section of each name's part before the
first "/": one section for the whole summary)."""

from __future__ import annotations

import logging
import re
import statistics
import time
from pathlib import Path

from omegaconf import OmegaConf

from mnist.paths import REPO_ROOT
from mnist.reporting.compare import load_references, search_filter, write_comparison
from mnist.reporting.table import Row, label

log = logging.getLogger(__name__)

# MLflow keeps tag values (a run's description) of up to 8000 characters.
MAX_DESCRIPTION = 8000


# The section of the parent's charts that holds them all.
PREFIX = "summary"


def _metric_label(row: Row) -> str:
    """A row's name as MLflow metric names allow it ("fast", "fast optimizer_adamw")."""
    return re.sub(r"[^\w./ -]", "_", label(row))


def summary_metrics(rows: list[Row]) -> dict[str, float]:
    """Each row's mean (and, over 2 runs or more, sample std) of the key metrics, e.g.
    summary/fast/test/acc_mean, summary/fast/test/acc_std."""
    metrics = {}
    for row in rows:
        for name, values in (("test/acc", row.checkpoint_acc), ("best/val_acc", row.val_acc),
                             ("train_time_s", row.train_time_s)):  # fmt: skip
            if values:
                metrics[f"{PREFIX}/{_metric_label(row)}/{name}_mean"] = statistics.fmean(values)
            if len(values) > 1:
                metrics[f"{PREFIX}/{_metric_label(row)}/{name}_std"] = statistics.stdev(values)
    return metrics


def summarize_sweep(uri: str, experiment_id: str, parent_run_id: str, output_dir: Path) -> None:
    """Makes the parent run the sweep's summary: its comparison (one row per model and
    config, mnist/reporting/compare.py) as artifacts and description, and each row's
    mean ± std as metrics. A sweep whose summary fails still ends: it is only logged."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment(experiment_id).name
        references = load_references(OmegaConf.load(REPO_ROOT / "conf" / "compare.yaml"))
        rows, paths, markdown = write_comparison(
            client, experiment, search_filter(parent_run_id, None), None, references,
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
