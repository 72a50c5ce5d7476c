"""The learning curves' names (mnist/metric_names.py): runs stored under the names they had
before keep working when they are resumed or reproduced."""

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import mnist.training.loop as loop_module
from mnist import metric_names
from mnist.context import JobContext
from mnist.job import run_training
from mnist.metric_names import OLD_NAMES
from mnist.tools.reproduce import WEIGHTS_TAG, compare_runs, passes

CURVES = ("TRAIN_ACC", "VAL_ACC", "TRAIN_LOSS", "VAL_LOSS")


def test_a_run_stopped_under_the_old_names_resumes_into_one_history(tiny_cfg, tmp_path):
    """Its epochs before the stop are its curves under the current names too, and its
    training_curves.png draws them all (last.pt's history holds the old names)."""

    def stop_in_second_epoch(metrics: dict[str, float], epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as old_code:
        for constant in CURVES:  # the loop as it was: split first
            old = next(o for o, new in OLD_NAMES.items() if new == getattr(metric_names, constant))
            old_code.setattr(loop_module, constant, old)
        stopped = JobContext(output_dir=tmp_path / "run", epoch_observer=stop_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            run_training(tiny_cfg("trainer.epochs=3"), stopped)
    last = tmp_path / "run" / "checkpoints" / "last.pt"

    result = run_training(tiny_cfg(f"trainer.resume={last}"), JobContext(tmp_path / "new"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    for constant in CURVES:
        name = getattr(metric_names, constant)
        history = client.get_metric_history(result["run_id"], name)
        assert sorted(metric.step for metric in history) == [1, 2, 3], name
    artifacts = {info.path for info in client.list_artifacts(result["run_id"])}
    assert "training_curves.png" in artifacts


def test_reproduce_compares_a_run_stored_under_the_old_names(tmp_path, empty_mlflow_db):
    client = MlflowClient(f"sqlite:///{empty_mlflow_db}")
    experiment = client.create_experiment("reproduce", artifact_location=tmp_path.as_uri())
    original, reproduced = (
        client.create_run(experiment, tags={WEIGHTS_TAG: "same"}).info.run_id for _ in range(2)
    )
    values = {"best/val_acc": [0.9], **{old: [0.5, 0.6] for old in OLD_NAMES}}
    for run, rename in ((original, str), (reproduced, metric_names.current)):
        client.log_batch(run, metrics=[
            Metric(rename(name), value, 0, step)
            for name, history in values.items() for step, value in enumerate(history, 1)
        ])  # fmt: skip

    rows = compare_runs(client.tracking_uri, original, reproduced)
    assert passes(rows, tolerance=0), [(r.name, r.original, r.reproduced) for r in rows]
    assert {row.name for row in rows} >= {f"{metric_names.VAL_ACC}[2]", "best/val_acc"}
