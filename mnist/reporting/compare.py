"""The comparison table of a finished sweep, from MLflow alone: a model's runs (one per seed)
become one row, with accuracy over seeds, cost per epoch and the reference numbers beside
it. Runs that did not finish are counted and listed, never dropped. A sweep's parent run
gets the table as its summary (mnist/sweeps/summary.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist.errors import ConfigError
from mnist.overrides import split_override
from mnist.reporting import table
from mnist.reporting.table import Row
from mnist.sweeps.runs import current_runs, partial_sweep
from mnist.tracking import store
from mnist.tracking.runs import log_artifacts, mlflow_run
from mnist.tracking.store import PARENT_TAG

log = logging.getLogger(__name__)


def search_filter(parent_run_id: str | None, extra: str | None) -> str:
    clauses = [f"tags.`{PARENT_TAG}` = '{parent_run_id}'"] if parent_run_id else []
    return " and ".join([*clauses, *([extra] if extra else [])])


def load_runs(client: Any, experiment: str, filter_string: str) -> list[Any]:
    """The training runs of `experiment` matching `filter_string`, oldest first
    (current_runs: a run that a resumed sweep restarted as a new run counts once)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ConfigError(
            f"logger.experiment={experiment!r} names no MLflow experiment in "
            f"{client.tracking_uri} (known: {known}); pass the logger.experiment of the sweep"
        )
    runs: list[Any] = []
    token = None
    while True:
        try:
            page = client.search_runs(
                [found.experiment_id],
                filter_string,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
        except MlflowException as e:
            raise ConfigError(f"filter={filter_string!r} is not an MLflow filter: {e}") from e
        runs += current_runs(page)
        token = page.token
        if not token:
            break
    if not runs:
        raise ConfigError(
            f"no training runs in experiment {experiment!r}"
            + (f" matching {filter_string!r}" if filter_string else "")
            + "; check parent_run_id / filter, or run the sweep first"
        )
    return runs


def group_value(run: Any, key: str) -> str | None:
    """A swept key's value in a run: a tag (seed), a param (optimizer, trainer.epochs),
    else a value from the run's Hydra overrides (keys that are no param)."""
    if key in run.data.tags:
        return run.data.tags[key]
    if key in run.data.params:
        return run.data.params[key]
    for override in run.data.tags.get("hydra.overrides", "").split():
        name, value = split_override(override)
        if name == key:
            return value
    return None


def describe_model(run: Any) -> tuple[int | None, str]:
    """Conv layers and downsampling of the model a run trained, as the run recorded them
    (mnist.models.describe.shape_tags); (None, "n/a") for a run that did not."""
    tags = run.data.tags
    layers = tags.get("model.conv_layers")
    return (int(layers) if layers else None), tags.get("model.pooling", "n/a")


def _history(client: Any, run_id: str, metric: str) -> list[float]:
    history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
    return [m.value for m in history]


def _add_finished(row: Row, client: Any, run: Any) -> None:
    """A metric the run did not log (an older trainer, a run cut short) stays out of the
    row's numbers instead of failing the table."""
    metrics, run_id = run.data.metrics, run.info.run_id
    test_per_epoch = _history(client, run_id, "test/acc_epoch")
    epoch_times = _history(client, run_id, "epoch_time_s")
    row.finished += 1
    if test_per_epoch:
        row.final_acc.append(test_per_epoch[-1])
        row.max_acc.append(max(test_per_epoch))
    if epoch_times:
        row.epochs.append(len(epoch_times))
        row.epoch_time_s += epoch_times
    for name, values in (("test/acc", row.checkpoint_acc), ("best/val_acc", row.val_acc),
                         ("train_time_s", row.train_time_s)):  # fmt: skip
        if name in metrics:
            values.append(metrics[name])
    row.img_per_s += _history(client, run_id, "throughput_img_s")


def build_rows(
    client: Any, runs: list[Any], group_by: list[str], references: dict[str, Any]
) -> list[Row]:
    """One row per model and group_by values, in the order the runs started."""
    for key in group_by:
        if all(group_value(run, key) is None for run in runs):
            raise ConfigError(
                f"group_by key {key!r} is no tag, param or override of any run; use e.g. "
                "seed, optimizer, trainer.epochs or another swept key"
            )
    rows: dict[tuple[str, ...], Row] = {}
    for run in runs:
        model = run.data.tags["model"]
        groups = {key: group_value(run, key) or "n/a" for key in group_by}
        row = rows.get((model, *groups.values()))
        if row is None:
            row = rows[(model, *groups.values())] = Row(model, groups)
            row.conv_layers, row.pooling = describe_model(run)
            row.reference = references.get(model)
        if "params_count" in run.data.metrics:
            row.params = int(run.data.metrics["params_count"])
        if run.info.status == "FINISHED":
            _add_finished(row, client, run)
        else:
            row.unfinished.append(run)
    return list(rows.values())


def write_comparison(
    client: Any, experiment: str, filter_string: str, group_by: list[str],
    references: dict[str, Any], output_dir: Path, parent_run_id: str | None = None,
) -> tuple[list[Row], list[Path], str]:  # fmt: skip
    """(rows, [table.md, table.csv, chart.png] written into `output_dir`, the Markdown).
    The table of a sweep (`parent_run_id`) that not all jobs finished says so: a job that
    failed before its run opened, or never ran, is in its parent's count, not in its runs."""
    runs = load_runs(client, experiment, filter_string)
    rows = build_rows(client, runs, group_by, references)
    output_dir.mkdir(parents=True, exist_ok=True)
    title = experiment + (f" ({filter_string})" if filter_string else "")
    markdown = table.markdown(rows, group_by, title)
    parent = client.get_run(parent_run_id) if parent_run_id else None
    if parent and (note := partial_sweep(parent, sum(row.finished for row in rows))):
        log.warning("%s", note)
        markdown += f"\n**Incomplete:** {note}.\n"
    paths = [
        table.write_text(markdown, output_dir / "table.md"),
        table.write_csv(rows, group_by, output_dir / "table.csv"),
        table.plot(rows, title, output_dir / "chart.png"),
    ]
    return rows, paths, markdown


def compare(cfg: DictConfig, output_dir: Path) -> list[Path]:
    """Writes table.md, table.csv and chart.png into `output_dir` (and logs them to a
    summary run in the same experiment when cfg.log_summary: a child of the sweep's parent
    run with parent_run_id); returns their paths."""
    from mlflow.tracking import MlflowClient

    experiment = cfg.logger.experiment
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    store.check_store(uri)
    client = MlflowClient(uri)
    filter_string = search_filter(cfg.parent_run_id, cfg.filter)
    group_by = list(cfg.group_by)
    references = OmegaConf.to_container(cfg.references, resolve=True)
    rows, paths, markdown = write_comparison(
        client, experiment, filter_string, group_by, references, output_dir, cfg.parent_run_id
    )
    log.info("%s", markdown)
    if cfg.log_summary:
        tags = {
            "compare.filter": filter_string,
            "compare.runs": str(sum(row.finished + len(row.unfinished) for row in rows)),
        }
        if cfg.parent_run_id:
            tags[PARENT_TAG] = cfg.parent_run_id
        params = {"group_by": ",".join(["model", *group_by])}
        run_name = cfg.logger.run_name or "compare"
        with mlflow_run(uri, experiment, run_name, tags, params) as run:
            log_artifacts(paths)
        log.info("Logged as artifacts of run %s", run.info.run_id)
    return paths
