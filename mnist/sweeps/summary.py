"""The sweep's summary on its parent run: the comparison of its runs
(mnist/reporting/compare.py) as artifacts, a description that opens with the winner, and
each row's mean ± std as metrics under summary/ (MLflow's charts make a section of each
name's part before the first "/": one section for the whole summary)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from mnist.paths import REPO_ROOT
from mnist.reporting import table
from mnist.reporting.compare import NOTE_TAG, load_references, write_comparison
from mnist.tracking.ui import children_path

log = logging.getLogger(__name__)


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
        comparison = write_comparison(
            client, experiment, parent_run_id, None, None, references, output_dir
        )
        # The table itself, without its notes: which model won, at the end of the sweep.
        log.info("%s", comparison.markdown.split("\n\n")[1])
        for path in comparison.paths:
            client.log_artifact(parent_run_id, str(path))
        timestamp = int(1000 * time.time())
        metrics = table.summary_metrics(comparison.rows).items()
        client.log_batch(parent_run_id, metrics=[Metric(k, v, timestamp, 0) for k, v in metrics])
        about = (
            f"[Open this sweep's runs]({children_path(experiment_id, parent_run_id)}), best "
            "validation first. The whole table (table.md, table.csv, chart.png): Artifacts."
        )
        client.set_tag(parent_run_id, NOTE_TAG, comparison.description(about))
    except Exception as e:  # the parent must still end with its status
        log.warning("The sweep's summary could not be made: %s", e)
