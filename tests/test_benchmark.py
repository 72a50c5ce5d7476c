import itertools

import pytest
import torch
from mlflow.tracking import MlflowClient

import mnist.tools.benchmark as benchmark_module
from mnist.data.augment import BatchAugment
from mnist.data.tensors import load_mnist
from mnist.errors import ConfigError
from mnist.tools.benchmark import benchmark, project_batches, run_benchmark, set_up_benchmark
from mnist.tools.classic import classic_batches, epoch_orders
from mnist.training.loop import train_step
from tests.helpers import compose_config, tiny_overrides, write_synthetic_mnist


@pytest.fixture(scope="module")
def torchvision_layout(tmp_path_factory):
    """Synthetic IDX files where torchvision's datasets.MNIST looks for them."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("data") / "MNIST" / "raw", 300, 100)


def test_both_pipelines_serve_the_same_batches_without_augmentation(torchvision_layout):
    cfg = compose_config(["augmentation=none"])
    data = load_mnist(torchvision_layout)
    train_idx = torch.arange(40, 300)
    augment = BatchAugment.from_config(cfg.augmentation, None)
    ours = project_batches(data, train_idx, 32, augment, seed=4)
    classic = classic_batches(
        torchvision_layout, augment, epoch_orders(train_idx, 32, seed=4), 32,
        workers=0, device=torch.device("cpu"),
    )  # fmt: skip
    for (a_images, a_labels), (b_images, b_labels) in itertools.islice(
        zip(ours, classic, strict=False), 20
    ):
        assert torch.equal(a_labels, b_labels)
        torch.testing.assert_close(a_images, b_images, rtol=0, atol=1e-6)


def test_benchmark_runs_on_tiny_data_and_logs_its_table(torchvision_layout, tmp_path):
    overrides = [
        *tiny_overrides(torchvision_layout, tmp_path),
        *("benchmark.steps=6", "benchmark.eval_every=3", "benchmark.target_acc=0.05"),
        *("benchmark.classic_workers=0", "trainer.batch_size=16"),
    ]
    cfg = compose_config(overrides, config_name="benchmark")
    # The benchmark's default, shift_rotate:
    assert BatchAugment.from_config(cfg.augmentation, None).name == "affine(rot10,shift0.1)"
    results = benchmark(cfg, tmp_path / "out")
    assert [r.name for r in results] == ["project", "classic"]
    assert all(r.train_img_s > 0 and r.eval_img_s > 0 for r in results)
    assert all(r.time_to_target_s is not None for r in results)  # 5% is always reached
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| project |" in table and "| classic |" in table and "speed-up" in table
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("benchmark").experiment_id])
    assert run.data.metrics["speedup/train"] == pytest.approx(
        results[0].train_img_s / results[1].train_img_s
    )
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"benchmark.md"}


def benchmark_config(data_root, tmp_path, *overrides):
    return compose_config(
        [*tiny_overrides(data_root, tmp_path), "benchmark.steps=8", "benchmark.classic_workers=0",
         "trainer.batch_size=16", *overrides],
        config_name="benchmark",
    )  # fmt: skip


def test_benchmark_times_the_trainers_own_step(torchvision_layout, tmp_path, monkeypatch):
    """Precision, clipping, label smoothing and the schedule are the trainer config's, so
    a GPU benchmark in bf16 measures bf16, not fp32 eager; each step is waited for."""
    cfg = benchmark_config(
        torchvision_layout, tmp_path, "trainer.precision=bf16", "trainer.grad_clip=0.5",
        "trainer.label_smoothing=0.1", "scheduler=onecycle",
    )  # fmt: skip
    steps, waits = [], []

    def spy_step(learner, images, labels, trainer, device):
        steps.append((trainer.precision, trainer.grad_clip, trainer.label_smoothing,
                      learner.schedule.scheduler.total_steps))  # fmt: skip
        return train_step(learner, images, labels, trainer, device)

    monkeypatch.setattr(benchmark_module, "train_step", spy_step)
    monkeypatch.setattr(benchmark_module, "synchronize", waits.append)
    run_benchmark(cfg, set_up_benchmark(cfg))
    # Both pipelines, 8 steps each; the one-cycle schedule spans the benchmark's steps.
    assert steps == [("bf16", 0.5, 0.1, 8)] * 16
    assert waits.count(torch.device("cpu")) >= 16


def test_benchmark_on_cpu_never_waits_for_a_gpu(torchvision_layout, tmp_path, monkeypatch):
    def gpu_sync(device=None):
        raise AssertionError("torch.cuda.synchronize called for a run on the cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU
    monkeypatch.setattr(torch.cuda, "synchronize", gpu_sync)
    # SGD: Adam's step asks a GPU that is said to exist for its stream.
    cfg = benchmark_config(torchvision_layout, tmp_path, "optimizer=sgd")
    results = run_benchmark(cfg, set_up_benchmark(cfg))
    assert all(r.train_img_s > 0 for r in results)


def test_benchmark_refuses_a_schedule_it_cannot_step(torchvision_layout, tmp_path):
    with pytest.raises(ConfigError, match=r"scheduler=step \(stepped once per epoch\) would") as e:
        benchmark(
            benchmark_config(torchvision_layout, tmp_path, "scheduler=step"), tmp_path / "out"
        )
    assert "\n" not in str(e.value)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "out").exists()


def test_benchmark_refuses_an_op_it_cannot_mirror(torchvision_layout, tmp_path, invert_op):
    cfg = benchmark_config(torchvision_layout, tmp_path, "+augmentation.invert={}")
    with pytest.raises(
        ConfigError, match=r"^augmentation.invert: the classic pipeline has no"
    ) as e:
        benchmark(cfg, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "out").exists()
