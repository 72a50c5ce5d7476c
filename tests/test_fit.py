"""The paths of the training loop that a default run does not take: each schedule, the
target accuracy, clipping, label smoothing, memory layout, bf16 and torch.compile, run
through `fit` itself on tiny synthetic data."""

import math
import signal

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mnist.config import run_settings, validate_config
from mnist.data.batches import batch_indices
from mnist.errors import ConfigError, TrainingInterrupted
from mnist.metric_names import TRAIN_LOSS, VAL_ACC, VAL_LOSS
from mnist.recipes import CONF_DIR
from mnist.tools.reproduce import TIMING_METRICS
from mnist.training.build import build_learner, initial_model, set_up
from mnist.training.checkpoint import load_checkpoint
from mnist.training.evaluation import evaluate
from mnist.training.resume import eager
from tests.helpers import compose_config
from tests.helpers.training import CPU, run_fit


def lrs(logged) -> list[float]:
    return [epoch["lr"] for epoch in logged]


def untimed(logged) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if k not in TIMING_METRICS} for epoch in logged]


def stopped_after_one_epoch_then_resumed(cfg, directory) -> list[dict[str, float]]:
    """fit() stopped by a SIGTERM after its first epoch, then resumed from its last.pt in
    `directory`: the metrics the resumed run logged."""

    def stop_after_first_epoch(metrics):
        signal.raise_signal(signal.SIGTERM)  # handled by fit: stop after this epoch

    with pytest.raises(TrainingInterrupted):
        run_fit(cfg, directory, after_epoch=stop_after_first_epoch)
    _, resumed, _ = run_fit(cfg, directory, resume_from=load_checkpoint(directory / "last.pt"))
    return resumed


def test_step_schedule_multiplies_the_rate_every_step_size_epochs(tiny_cfg, tmp_path):
    cfg = tiny_cfg("scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5",
                   "trainer.epochs=5")  # fmt: skip
    _, logged, _ = run_fit(cfg, tmp_path)
    lr = cfg.optimizer.lr
    assert lrs(logged) == pytest.approx([lr, lr, lr / 2, lr / 2, lr / 4])


def test_cosine_schedule_anneals_every_step_to_its_minimum(tiny_cfg, tmp_path):
    cfg = tiny_cfg("scheduler=cosine", "scheduler.min_lr=1e-5", "trainer.epochs=3")
    _, logged, learner = run_fit(cfg, tmp_path)
    lr, low = cfg.optimizer.lr, 1e-5
    # Epochs start a third and two thirds of the way through the run's steps.
    expected = [low + (lr - low) * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert lrs(logged) == pytest.approx(expected)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(low)


SCHEDULES = sorted(path.stem for path in (CONF_DIR / "scheduler").glob("*.yaml"))
SCHEDULE_CONFIGS = {name: compose_config(["device=cpu", f"scheduler={name}"]) for name in SCHEDULES}


@settings(max_examples=150, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    train_size=st.integers(1, 128),
    batch_size=st.integers(1, 160),
    epochs=st.integers(1, 4),
)
# Issue 30: 4 steps, where one-cycle's one-step warm-up raised ZeroDivisionError.
@example(schedule="onecycle", train_size=600, batch_size=128, epochs=1)
def test_every_small_run_steps_its_whole_schedule_or_is_refused(
    schedule, train_size, batch_size, epochs
):
    """Every run length (data.train_subset images, trainer.batch_size, trainer.epochs) of
    every schedule: the optimizer and schedule built as training builds them step through
    every batch the loop draws and every epoch end, or the config is refused in one line."""
    cfg = SCHEDULE_CONFIGS[schedule].copy()
    cfg.data.train_subset, cfg.trainer.batch_size, cfg.trainer.epochs = (
        train_size, batch_size, epochs,
    )  # fmt: skip
    try:
        validate_config(cfg)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    learner = build_learner(run_settings(cfg), torch.nn.Linear(1, 1), CPU, train_size)
    batches = len(list(batch_indices(torch.arange(train_size), batch_size, drop_last=True)))
    for _ in range(epochs):
        for _ in range(batches):
            learner.optimizer.step()
            if learner.schedule and learner.schedule.interval == "step":
                learner.schedule.scheduler.step()
        if learner.schedule and learner.schedule.interval == "epoch":
            learner.schedule.scheduler.step()
        elif learner.schedule and learner.schedule.interval == "plateau":
            learner.schedule.scheduler.step(0.5)
        assert 0 <= learner.optimizer.param_groups[0]["lr"] < math.inf


def test_plateau_schedule_cuts_the_rate_when_validation_stalls(tiny_cfg, tmp_path):
    # A learning rate too small to learn: validation accuracy never improves on epoch 1.
    cfg = tiny_cfg("scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5",
                   "optimizer.lr=1e-6", "trainer.epochs=4")  # fmt: skip
    _, logged, _ = run_fit(cfg, tmp_path)
    val = [epoch[VAL_ACC] for epoch in logged]
    assert all(later <= val[0] for later in val[1:])
    assert lrs(logged) == pytest.approx([1e-6, 1e-6, 5e-7, 2.5e-7])


def test_target_accuracy_stops_at_the_first_epoch_that_reaches_it(tiny_cfg, tmp_path):
    result, logged, _ = run_fit(tiny_cfg("trainer.target_acc=0.5", "trainer.epochs=10"), tmp_path)
    reached = [epoch[VAL_ACC] >= 0.5 for epoch in logged]
    assert reached[-1] and not any(reached[:-1])
    assert result.stopped_early and len(logged) < 10
    assert [epoch["epoch"] for epoch in logged if "time_to_target_s" in epoch] == [len(logged)]
    assert 0 < logged[-1]["time_to_target_s"] <= result.train_time_s
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["stopped_early"]


def test_gradient_clipping_bounds_every_step(tiny_cfg, tmp_path):
    """Plain SGD moves the weights by lr x the clipped gradient, whose norm is at most
    grad_clip: 10 steps move them at most 10 x lr x grad_clip in all."""
    plain_sgd = ("optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=false",
                 "optimizer.weight_decay=0", "optimizer.lr=1.0", "scheduler=none",
                 "trainer.epochs=1")  # fmt: skip

    def distance_moved(*overrides) -> float:
        cfg = tiny_cfg(*plain_sgd, *overrides)
        _, _, learner = run_fit(cfg, tmp_path)
        start = dict(initial_model(run_settings(cfg), CPU).named_parameters())
        moved = [p.detach() - start[name] for name, p in learner.model.named_parameters()]
        return torch.linalg.vector_norm(torch.cat([m.flatten() for m in moved])).item()

    steps = (500 - 0) // 50  # 600 synthetic images - 100 for validation, batches of 50
    assert 0 < distance_moved("trainer.grad_clip=0.001") <= steps * 1.0 * 0.001 * 1.0001
    assert distance_moved() > 10 * steps * 0.001  # without clipping it moves far more


def test_label_smoothing_bounds_the_training_loss_only(tiny_cfg, tmp_path):
    """Cross-entropy against a smoothed target is at least that target's entropy; the
    validation loss is the plain cross-entropy, which training drives below it."""
    smoothing, classes = 0.5, 10
    target = torch.full((classes,), smoothing / classes)
    target[0] += 1 - smoothing
    entropy = -(target * target.log()).sum().item()
    _, logged, _ = run_fit(tiny_cfg(f"trainer.label_smoothing={smoothing}", "trainer.epochs=3"),
                           tmp_path)  # fmt: skip
    assert all(epoch[TRAIN_LOSS] >= entropy for epoch in logged)
    assert logged[-1][VAL_LOSS] < entropy


@pytest.mark.parametrize("channels_last", [False, True])
def test_memory_layout_follows_channels_last(tiny_cfg, tmp_path, channels_last):
    result, _, learner = run_fit(tiny_cfg(f"trainer.channels_last={channels_last}"), tmp_path)
    weight = learner.model.features[4].weight  # the second conv: 16 input channels
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert weight.is_contiguous() is not channels_last
    assert result.best_val_acc > 0.9  # the synthetic classes are learnt either way


@pytest.mark.slow  # bf16 without bf16 units (AVX2) is emulated: slow
def test_bf16_trains_and_evaluates_on_cpu(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.precision=bf16", "trainer.epochs=3")
    result, logged, learner = run_fit(cfg, tmp_path)
    assert all(math.isfinite(epoch[TRAIN_LOSS]) for epoch in logged)
    assert logged[-1][TRAIN_LOSS] < logged[0][TRAIN_LOSS]
    assert result.best_val_acc > 0.9
    setup = set_up(run_settings(cfg), CPU)
    data, val_idx = setup.data, setup.val_idx
    val = evaluate(learner.model, data.train_images[val_idx], data.train_labels[val_idx], 64,
                   CPU, "bf16")  # fmt: skip
    assert val.probabilities.dtype == torch.float32 and math.isfinite(val.loss)


@pytest.mark.slow  # torch.compile: a minute of compiling on 2 cores
def test_compiled_model_trains_evaluates_ragged_batches_and_resumes(tiny_cfg, tmp_path):
    # 100 validation and 200 test images in batches of 64: both end in a short batch.
    cfg = tiny_cfg("trainer.compile=true", "trainer.eval_batch_size=64", "trainer.epochs=3",
                   "trainer.test_every_epoch=true", "augmentation=shift_rotate")  # fmt: skip
    _, reference, learner = run_fit(cfg, tmp_path / "reference")
    setup = set_up(run_settings(cfg), CPU)
    data, val_idx = setup.data, setup.val_idx
    images, labels = data.train_images[val_idx], data.train_labels[val_idx]
    compiled = evaluate(learner.model, images, labels, 64, CPU)
    plain = evaluate(eager(learner.model), images, labels, 64, CPU)
    assert torch.equal(compiled.predictions, plain.predictions)
    assert compiled.loss == pytest.approx(plain.loss, rel=1e-4)
    assert compiled.accuracy == reference[-1][VAL_ACC]

    resumed = stopped_after_one_epoch_then_resumed(cfg, tmp_path / "run")
    assert untimed(resumed) == untimed(reference[1:])


def test_the_moving_average_is_what_is_validated_and_kept_as_best(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.ema_decay=0.9", "trainer.epochs=1", "model=gap20k")
    _, logged, learner = run_fit(cfg, tmp_path)
    setup = set_up(run_settings(cfg), CPU)
    data, val_idx = setup.data, setup.val_idx
    images, labels = data.train_images[val_idx], data.train_labels[val_idx]
    average, trained = learner.ema.module, learner.model
    assert evaluate(average, images, labels, 64, CPU).loss == pytest.approx(logged[0][VAL_LOSS])
    assert evaluate(trained, images, labels, 64, CPU).loss != pytest.approx(logged[0][VAL_LOSS])
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    # BatchNorm's running statistics are the average's too.
    assert all(torch.equal(best[k], v) for k, v in average.state_dict().items())
    mean = "stem.0.1.running_mean"
    assert not torch.equal(best[mean], trained.state_dict()[mean])


def test_a_run_with_a_moving_average_resumes_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.ema_decay=0.9", "trainer.epochs=3", "model=gap20k")
    _, reference, _ = run_fit(cfg, tmp_path / "reference")

    resumed = stopped_after_one_epoch_then_resumed(cfg, tmp_path / "run")
    assert untimed(resumed) == untimed(reference[1:])
    best, again = (load_checkpoint(tmp_path / d / "best.pt")["model"] for d in ("reference", "run"))
    assert all(torch.equal(best[k], again[k]) for k in best)
