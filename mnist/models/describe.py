"""A model's shape as the comparison table names it, read off the built module."""

from collections.abc import Callable

from torch import nn


def conv_layers(model: nn.Module) -> int:
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


def _strided_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and max(module.stride) > 1


# Every pooling layer torch has, and strided convolutions, in the order names are joined.
DOWNSAMPLING: dict[str, Callable[[nn.Module], bool]] = {
    "MaxPool": lambda m: isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                                        nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)),
    "strided conv": _strided_conv,
    "AvgPool": lambda m: isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)),
    "LPPool": lambda m: isinstance(m, (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d)),
    "global max pool": lambda m: isinstance(
        m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
    ),
    "global avg pool": lambda m: isinstance(
        m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
    ),
}  # fmt: skip


def downsampling(model: nn.Module) -> str:
    modules = list(model.modules())
    kinds = [name for name, kind in DOWNSAMPLING.items() if any(map(kind, modules))]
    return " + ".join(kinds) or "none"


def shape_tags(model: nn.Module) -> dict[str, str]:
    """Logged with each run: the comparison reads what was trained, rebuilding nothing."""
    return {"model.conv_layers": str(conv_layers(model)), "model.pooling": downsampling(model)}
