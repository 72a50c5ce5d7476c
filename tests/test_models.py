from itertools import takewhile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mnist.errors import ConfigError
from mnist.models import ConvNet, GAP20k, build_model, built_on_meta, summarize
from mnist.models.describe import downsampling
from mnist.paths import REPO_ROOT
from tests.helpers import CONF_DIR

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def build(name: str) -> nn.Module:
    return instantiate(OmegaConf.load(Path(CONF_DIR / "model" / f"{name}.yaml")))


def test_every_reference_accuracy_names_a_model():
    # conf/compare.yaml's references are data about other projects: a model needs none.
    for name in OmegaConf.load(CONF_DIR / "compare.yaml").references:
        assert name in MODEL_CONFIGS, f"conf/compare.yaml: references.{name} names no model"


def readme_model_table() -> dict[str, list[str]]:
    """{option: its other cells} of README.md's table of models."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    start = lines.index("| option | architecture | parameters | MACs per image |") + 2
    rows = [line.strip("|").split(" | ") for line in takewhile(str.strip, lines[start:])]
    return {cells[0].strip(" `"): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_the_readme_model_table_gives_each_models_true_size():
    """The table lists the models this repository ships, each with its size as built; a
    model of one's own needs no row (adding one needs only its module and YAML)."""
    table = readme_model_table()
    assert set(table) <= set(MODEL_CONFIGS), "README.md's model table names a missing model"
    for name in table:
        summary = summarize(build(name))
        size = [f"{summary.total_params:,}", f"{summary.macs:,}"]
        row = f"| `{name}` | {table[name][0]} | {' | '.join(size)} |"
        assert table[name][1:] == size, f"README.md's model table: make {name}'s row {row}"


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


@pytest.mark.parametrize(("tail", "seen"), [(0, 16), (1, 24), (2, 28)])
def test_each_gap20k_tail_conv_widens_what_a_class_map_cell_sees(tail, seen):
    torch.manual_seed(0)
    model = GAP20k(width=8, tail=tail).eval()
    image = torch.randn(1, 1, 28, 28, requires_grad=True)
    features = model.stem(image)
    class_maps = model.head[:-2](model.relu(features + model.residual(features)))
    class_maps[0, :, 3, 3].sum().backward()  # the centre cell of the 7x7 maps
    columns = image.grad[0, 0].abs().sum(0).nonzero().flatten()
    assert columns.max() - columns.min() + 1 == seen


@pytest.mark.parametrize(("tail", "problem"), [(-1, "must be >= 0"), (1.5, "must be an integer")])
def test_gap20k_tail_is_a_count(tail, problem):
    with pytest.raises(ConfigError, match=f"^model.tail={tail} {problem}"):
        build_model({"_target_": "mnist.models.GAP20k", "tail": tail})


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


@pytest.mark.parametrize(
    ("layers", "named"),
    [
        ([nn.Conv2d(1, 4, 3), nn.Flatten()], "none"),
        ([nn.Conv2d(1, 4, 3, stride=2), nn.AvgPool2d(2)], "strided conv + AvgPool"),
        ([nn.LPPool2d(2, 2), nn.AdaptiveMaxPool2d(1)], "LPPool + global max pool"),
        ([nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)], "MaxPool + global avg pool"),
        (
            [nn.AdaptiveAvgPool2d((1, 1)), nn.AdaptiveMaxPool2d(4)],
            "adaptive max pool + global avg pool",
        ),
        ([nn.AdaptiveAvgPool2d((4, None))], "adaptive avg pool"),
    ],
)
def test_every_kind_of_pooling_is_named(layers, named):
    assert downsampling(nn.Sequential(*layers)) == named


def test_cnn4_has_four_batchnormed_convolutions():
    model = build("cnn4")
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4


def test_a_fresh_convnet_starts_from_batchnorms_initial_state():
    """Building the model works out its head's input size without a training-mode forward
    pass, which would have updated BatchNorm's running statistics once already."""
    model = build("cnn3")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and model.training
    for norm in norms:
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
        assert norm.num_batches_tracked.item() == 0


@pytest.mark.parametrize(
    ("stages", "downsample"),
    [([[8]] * 5, "stride"), ([[4], [4, 4], [8]], "pool"), ([[4], [], [8]], "stride"), ([], "pool")],
)
def test_the_head_fits_the_features_of_any_depth(stages, downsample):
    """Five stride-2 stages take 28x28 down to 1x1: the training-mode probe of one image
    that sized the head made BatchNorm refuse that single value per channel."""
    model = ConvNet(stages=stages, downsample=downsample, hidden=None, dropout=0.0).eval()
    features = model.features(torch.zeros(3, 1, 28, 28))
    assert model.classifier[-1].in_features == features[0].numel()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_a_convnet_pooled_below_one_pixel_is_refused():
    with pytest.raises(ConfigError, match="5 pooling stages take a 28x28 image below 1x1"):
        build_model({"_target_": "mnist.models.ConvNet", "stages": [[4]] * 5})


def as_a_models_class(monkeypatch, cls: type[nn.Module]) -> dict[str, str]:
    """`cls` as if defined in mnist/models/dense.py (only the package's classes are built):
    the model config that names it."""
    monkeypatch.setattr(cls, "__module__", "mnist.models.dense")
    monkeypatch.setattr(f"mnist.models.dense.{cls.__name__}", cls, raising=False)
    return {"_target_": f"mnist.models.dense.{cls.__name__}"}


class LazyNet(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.Dropout(0.5),
                                  nn.Flatten(), nn.LazyLinear(10))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_lazy_layer_takes_its_size_from_a_batch_that_changes_no_statistic(monkeypatch):
    lazy_net = as_a_models_class(monkeypatch, LazyNet)
    model = build_model({**lazy_net, "width": 4})
    assert model.body[4].weight.shape == (10, 4 * 26 * 26) and model.training
    norm = model.body[1]
    assert norm.num_batches_tracked == 0 and norm.running_mean.eq(0).all()
    assert built_on_meta(lazy_net, channels_last=True)


class ViewNet(nn.Module):
    """Flattens with .view, as older PyTorch examples do."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, width, 3, stride=2), nn.Linear(width * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.shape[0], -1))


def test_a_model_that_views_channels_last_outputs_is_refused_with_its_fix(monkeypatch):
    view_net = as_a_models_class(monkeypatch, ViewNet)
    with pytest.raises(ConfigError, match=r"\.reshape rather than \.view, or set trainer\.chan"):
        built_on_meta(view_net, channels_last=True)
    assert built_on_meta(view_net).fc.weight.is_meta


class Scaled(nn.Module):
    """Keeps a tensor as a plain attribute: built on meta, it stays there."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.scale = nn.Linear(784, 10), torch.tensor(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1)) * self.scale


def test_a_model_the_cpu_call_cannot_run_is_not_blamed_on_channels_last(monkeypatch):
    assert built_on_meta(as_a_models_class(monkeypatch, Scaled), channels_last=True)
