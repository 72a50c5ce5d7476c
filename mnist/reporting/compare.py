"""A sweep's runs compared, from MLflow alone: one row per config (its seeds pooled) beside
its reference numbers; runs that did not finish are counted and listed, never dropped."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist.data.tensors import MNIST_TRAIN_SIZE
from mnist.errors import ConfigError
from mnist.overrides import override_key, split_override
from mnist.reporting import plots, table
from mnist.reporting.table import Row
from mnist.tracking import queries, store, ui
from mnist.tracking.params import changes_results
from mnist.tracking.registry import latest_sweep
from mnist.tracking.runs import log_run
from mnist.tracking.store import children_filter
from mnist.tracking.sweep_runs import current_runs, partial_sweep

log = logging.getLogger(__name__)

ALL_RUNS = "all"  # parent_run_id=all: every training run of the experiment


def search_filter(parent_run_id: str | None, extra: str | None) -> str:
    return " and ".join(filter(None, [parent_run_id and children_filter(parent_run_id), extra]))


def group_value(run: Any, key: str) -> str | None:
    """A swept key's value in a run: a tag (seed), a param, else from its Hydra overrides."""
    overrides = map(split_override, run.data.tags.get("hydra.overrides", "").split())
    found = next((value for name, value in overrides if name == key), None)
    return run.data.tags.get(key, run.data.params.get(key, found))


def config_keys(runs: list[Any]) -> list[str]:
    """The keys that can change the runs' numbers but the model and seed, overrides' first."""
    overrides = [override_key(override) for run in runs
                 for override in run.data.tags.get("hydra.overrides", "").split()]  # fmt: skip
    params = sorted({key for run in runs for key in run.data.params})
    return [
        key for key in dict.fromkeys([*overrides, *params])
        if key not in {"model", "seed"} and changes_results(key)
    ]  # fmt: skip


def split_keys(runs: list[Any]) -> list[str]:
    """The config_keys that, with the model, tell every config among `runs` apart."""

    def configs(keys: list[str]) -> int:
        return len({(run.data.tags["model"], *(group_value(run, k) for k in keys)) for run in runs})

    keys: list[str] = []
    for key in config_keys(runs):
        if configs([*keys, key]) > configs(keys):
            keys.append(key)
    return keys


def _row(uri: str, runs: list[Any], keys: list[str], references: dict[str, Any]) -> Row:
    """A metric a run did not log (a run cut short) stays out of the row's numbers."""
    first, tags = runs[0], runs[0].data.tags
    layers = tags.get("model.conv_layers")  # models.describe.shape_tags
    row = Row(tags["model"], {key: group_value(first, key) or "n/a" for key in keys},
              conv_layers=int(layers) if layers else None, pooling=tags.get("model.pooling", "n/a"),
              reference=references.get(tags["model"]), mixed=split_keys(runs))  # fmt: skip
    for run in runs:
        metrics, params, run_id = run.data.metrics, run.data.params, run.info.run_id
        if "params_count" in metrics:
            row.params = int(metrics["params_count"])
        if run.info.status != "FINISHED":
            row.unfinished.append(run)
            continue
        row.finished += 1
        images = None  # not recorded
        if "data.val_size" in params:
            images = MNIST_TRAIN_SIZE - int(params["data.val_size"])
            subset = params.get("data.train_subset", "None")
            images = images if subset == "None" else min(images, int(subset))
        row.train_images.append(images)
        if test_per_epoch := queries.metric_history(uri, run_id, "test/acc_epoch"):
            row.final_acc.append(test_per_epoch[-1])
            row.max_acc.append(max(test_per_epoch))
        if epoch_times := queries.metric_history(uri, run_id, "epoch_time_s"):
            row.epochs.append(len(epoch_times))
            row.epoch_time_s += epoch_times
        for name, values in (("test/acc", row.checkpoint_acc), ("best/val_acc", row.val_acc),
                             ("train_time_s", row.train_time_s)):  # fmt: skip
            if name in metrics:
                values.append(metrics[name])
        row.img_per_s += queries.metric_history(uri, run_id, "throughput_img_s")
    return row


def load_references(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """conf/compare.yaml's references, each with its train_images."""
    references = OmegaConf.to_container(cfg.references, resolve=True)
    return {model: {"train_images": cfg.reference_train_images, **reference}
            for model, reference in references.items()}  # fmt: skip


def write_comparison(
    uri: str, experiment: str, parent_run_id: str | None, extra_filter: str | None,
    group_by: list[str] | None, references: dict[str, Any], output_dir: Path,
) -> tuple[list[Row], list[Path], str, Callable[[str], str]]:  # fmt: skip
    """The runs of the sweep `parent_run_id` (None: all) matching `extra_filter`, a row per model
    and value of each group_by key (None: of split_keys), best validation first, written into
    `output_dir`. Returns the rows, the files, the table, and a run's description given what it
    is about; table and description say when not every job of the sweep finished."""
    filter_string = search_filter(parent_run_id, extra_filter)
    found = queries.search_runs(uri, queries.experiment_id(uri, experiment), filter_string)
    if not (runs := current_runs(found)):
        raise ConfigError(
            f"no training runs in experiment {experiment!r}"
            + (f" matching {filter_string!r}" if filter_string else "")
            + "; check parent_run_id / filter, or run the sweep first"
        )
    for key in group_by or []:
        if all(group_value(run, key) is None for run in runs):
            raise ConfigError(
                f"group_by key {key!r} is no tag, param or override of any run; use e.g. "
                "seed, optimizer, trainer.epochs or another swept key"
            )
    keys = split_keys(runs) if group_by is None else group_by
    grouped: dict[tuple[str, ...], list[Any]] = {}
    for run in runs:
        groups = (group_value(run, key) or "n/a" for key in keys)
        grouped.setdefault((run.data.tags["model"], *groups), []).append(run)
    rows = [_row(uri, row_runs, keys, references) for row_runs in grouped.values()]
    rows.sort(key=lambda row: table.average(row.val_acc) or -math.inf, reverse=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    parent = store.client(uri).get_run(parent_run_id) if parent_run_id else None
    title = f"{experiment}: {parent.info.run_name}" if parent else experiment
    title += f" ({extra_filter})" if extra_filter else ""
    markdown = table.markdown(rows, title)
    note = partial_sweep(parent, sum(row.finished for row in rows)) if parent else None
    if note:
        log.warning("%s", note)
        markdown += f"\n**Incomplete:** {note}.\n"
    (output_dir / "table.md").write_text(markdown)
    paths = [
        output_dir / "table.md",
        table.write_csv(rows, output_dir / "table.csv"),
        plots.plot_comparison(rows, title, output_dir / "chart.png"),
    ]
    incomplete = f" **Incomplete:** {note}." if note else ""
    return rows, paths, markdown, lambda about: table.description(rows, title, about + incomplete)


def compare(cfg: DictConfig, output_dir: Path) -> list[Path]:
    """Writes table.md, table.csv and chart.png into `output_dir` and returns their paths;
    with cfg.log_summary, logs them to a run of `<experiment>/compare`, an experiment of its
    own, so that the training runs' list and a sweep's own summary stay as they were."""
    experiment, parent_run_id = cfg.logger.experiment, cfg.parent_run_id
    uri = store.tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
    store.check_store(
        uri, writes=cfg.log_summary, read_only_option="log_summary=false", experiment=experiment
    )
    experiment_id = queries.experiment_id(uri, experiment)
    if parent_run_id == ALL_RUNS:
        parent_run_id = None
    elif not parent_run_id:
        try:
            parent_run_id = latest_sweep(uri, experiment)
        except ConfigError as e:
            raise ConfigError(f"{e}, or parent_run_id={ALL_RUNS} for all its runs") from e
    group_by = None if cfg.group_by is None else list(cfg.group_by)
    rows, paths, markdown, describe = write_comparison(
        uri, experiment, parent_run_id, cfg.filter, group_by, load_references(cfg), output_dir
    )
    log.info("%s", markdown)
    if not cfg.log_summary:
        return paths
    # The comparison as a run: its files, a description, each row's mean ± std as metrics.
    if parent_run_id:
        name = store.client(uri).get_run(parent_run_id).info.run_name
        view = ui.show_children(store.client(uri), experiment_id, parent_run_id)
        source = (
            f"the runs of [{name}]({ui.run_path(experiment_id, parent_run_id)}) "
            f"([open them]({view}))"
        )
    else:
        source = f"the training runs of [{experiment}]({ui.runs_path(experiment_id)})"
    how = "".join(f", {key}={cfg[key]}" for key in ("filter", "group_by") if cfg[key] is not None)
    about = f"Compares {source}{how}. table.md, table.csv and chart.png: Artifacts."
    tags = {
        "compare.experiment": experiment,
        "compare.parent_run_id": parent_run_id or ALL_RUNS,
        "compare.filter": search_filter(parent_run_id, cfg.filter),
        "compare.runs": str(sum(row.finished + len(row.unfinished) for row in rows)),
        store.NOTE_TAG: describe(about),
    }
    params = {"group_by": ",".join(["model", *rows[0].groups])}
    log_run(uri, f"{experiment}/compare", cfg.logger.run_name or "compare", tags, params,
            table.summary_metrics(rows), paths, "the comparison")  # fmt: skip
    return paths
