from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mnist.models import summarize
from tests.helpers import CONF_DIR

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def build(name: str) -> nn.Module:
    return instantiate(OmegaConf.load(Path(CONF_DIR / "model" / f"{name}.yaml")))


def test_every_reference_architecture_has_a_config():
    expected = {"linear", "mlp", "tinyvgg", "cnn2", "cnn3", "cnn3_stride", "cnn4", "cnn24k"}
    assert expected | {"gap20k", "fast"} <= set(MODEL_CONFIGS)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_forward_gives_ten_logits_per_image(name):
    model = build(name).eval()
    logits = model(torch.randn(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_backward_reaches_every_parameter(name):
    model = build(name).train()
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cnn24k_has_exactly_the_reference_parameter_count():
    assert summarize(build("cnn24k")).total_params == 24_488


def test_gap20k_is_a_sub_20k_gap_net_without_linear_layers():
    model = build("gap20k")
    kinds = {type(m) for m in model.modules()}
    assert summarize(model).total_params < 20_000
    assert nn.BatchNorm2d in kinds and nn.Dropout in kinds and nn.AdaptiveAvgPool2d in kinds
    assert nn.Linear not in kinds


def test_gap20k_residual_connection_changes_the_output():
    model = build("gap20k").eval()
    x = torch.randn(2, 1, 28, 28)
    before = model(x)
    with torch.no_grad():
        for p in model.residual.parameters():
            p.add_(1.0)
    assert not torch.allclose(before, model(x))


@pytest.mark.parametrize(
    ("name", "flat_features", "total"),
    [
        ("cnn2", 9216, (1_150_000, 1_250_000)),
        ("cnn3", 1152, None),
        ("tinyvgg", 490, None),
        ("linear", 784, (7960, 7960)),
        ("mlp", 784, (7960, 7960)),
    ],
)
def test_reference_layer_sizes(name, flat_features, total):
    model = build(name)
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == flat_features
    if total:
        assert total[0] <= summarize(model).total_params <= total[1]


def test_linear_baseline_is_a_linear_map_and_mlp_is_not():
    x = torch.randn(3, 1, 28, 28)
    for name, linear in (("linear", True), ("mlp", False)):
        model = build(name).eval()
        bias = model(torch.zeros(1, 1, 28, 28))
        additive = torch.allclose(model(2 * x) - bias, 2 * (model(x) - bias), atol=1e-5)
        assert additive is linear


def test_strided_variant_has_no_pooling():
    kinds = {type(m) for m in build("cnn3_stride").modules()}
    assert nn.MaxPool2d not in kinds
    assert nn.MaxPool2d in {type(m) for m in build("cnn3").modules()}


def test_cnn4_has_four_batchnormed_convolutions():
    model = build("cnn4")
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
