import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mnist.models import (
    ConvNet,
    DenseNet,
    LayerSummary,
    build_model,
    format_summary,
    summarize,
)
from tests.helpers import CONF_DIR, run_script

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def build(name: str) -> nn.Module:
    return build_model(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_parameters_match_the_model_and_every_one_is_in_a_row(name):
    model = build(name)
    summary = summarize(model)
    assert (
        summary.total_params
        == summary.trainable_params
        == sum(p.numel() for p in model.parameters())
    )
    assert sum(layer.params for layer in summary.layers) == summary.total_params
    assert summary.layers[-1].output_shape == (10,)
    assert summary.macs > 0


def test_linear_model_by_hand():
    summary = summarize(DenseNet(hidden=10, relu=False))
    assert summary.layers == (
        LayerSummary("layers.0", "Flatten", (784,), 0, 0),
        LayerSummary("layers.1", "Linear", (10,), 784 * 10 + 10, 784 * 10),
        LayerSummary("layers.2", "Identity", (10,), 0, 0),
        LayerSummary("layers.3", "Linear", (10,), 10 * 10 + 10, 10 * 10),
    )
    assert summary.macs == 7_940 and summary.input_shape == (1, 28, 28)


def test_tiny_convnet_by_hand():
    summary = summarize(ConvNet(stages=[[2]], hidden=None, dropout=0.0))
    conv_macs = 28 * 28 * 2 * (1 * 3 * 3)
    assert summary.layers == (
        LayerSummary("features.0", "Conv2d", (2, 28, 28), 2 * 9, conv_macs),
        LayerSummary("features.1", "BatchNorm2d", (2, 28, 28), 4, 0),
        LayerSummary("features.2", "ReLU", (2, 28, 28), 0, 0),
        LayerSummary("features.3", "MaxPool2d", (2, 14, 14), 0, 0),
        LayerSummary("classifier.0", "Flatten", (392,), 0, 0),
        LayerSummary("classifier.1", "Linear", (10,), 392 * 10 + 10, 392 * 10),
    )
    assert summary.macs == conv_macs + 3_920 == 18_032


def test_cnn24k_counts_weights_and_leaves_bias_adds_out():
    """The numbers torchinfo 1.8 does not give (it counts a multiply-add per bias and per
    BatchNorm weight: 497,048 here), so the table stays hand-written."""
    summary = summarize(build("cnn24k"))
    assert summary.total_params == 24_488
    assert [(layer.name, layer.macs) for layer in summary.layers if layer.macs] == [
        ("layers.0", 26 * 26 * 8 * 9),
        ("layers.3", 11 * 11 * 16 * 8 * 9),
        ("layers.5", 9 * 9 * 24 * 16 * 9),
        ("layers.9", 50 * 384),
        ("layers.11", 10 * 50),
    ]
    assert summary.macs == 487_700


def test_grouped_strided_conv_on_another_input_shape():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2))
    (layer,) = summarize(model, input_shape=(4, 9, 9)).layers
    assert layer == LayerSummary("0", "Conv2d", (8, 5, 5), 8 * 2 * 9 + 8, 5 * 5 * 8 * 2 * 9)


@pytest.mark.parametrize("name", ["fast", "gap20k"])
def test_channels_last_gives_the_same_summary(name):
    model = build(name)
    assert summarize(model.to(memory_format=torch.channels_last)) == summarize(build(name))


def test_model_rng_and_modes_are_left_as_they_were():
    model = build("gap20k").train()
    model.stem[0].eval()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    summarize(model)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_hooks for m in model.modules())


def test_a_failing_forward_pass_still_restores_the_model():
    model = build("fast").train()
    with pytest.raises(RuntimeError):
        summarize(model, input_shape=(1, 4, 4))  # too small for three poolings
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())


def test_format_summary_table_and_totals():
    model = DenseNet(hidden=10, relu=False)
    model.layers[1].requires_grad_(False)
    lines = format_summary(summarize(model)).splitlines()
    assert lines[0].split() == ["Layer", "Type", "Output", "shape", "Params", "MACs"]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    assert lines[3].split() == ["layers.1", "Linear", "[10]", "7,850", "7,840"]
    assert lines[-3:] == [
        "Input shape: [1, 28, 28]",
        "Total parameters: 7,960 (trainable: 110)",
        "MACs per image: 7,940 (≈ 0.00794 M)",
    ]


def test_script_prints_the_table():
    result = run_script("summary", "model=cnn4")
    assert result.returncode == 0, result.stderr
    assert "features.0  " in result.stdout and "classifier.3" in result.stdout
    assert "Total parameters: 468,010 (trainable: 468,010)" in result.stdout
    assert "MACs per image: 18,691,840" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dropout=2", "from model.dropout=2 (dropout probability"),
        ("model._target_=os.system", "os.system"),
    ],
)
def test_script_refuses_a_bad_model_option_in_one_line(override, message):
    result = run_script("summary", override)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
