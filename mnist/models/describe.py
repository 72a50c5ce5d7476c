"""The shape of a model as the comparison table names it (conv layers, how it downsamples),
read off the built module so that the table cannot disagree with the code."""

from collections.abc import Callable

from torch import nn


def conv_layers(model: nn.Module) -> int:
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


def _strided_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and max(module.stride) > 1


# How a layer downsamples, as the table names it, in the order names are joined: every
# pooling layer torch has, and convolutions with a stride.
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
    """ "MaxPool", "strided conv", "AvgPool", "global avg pool"..., joined with " + " when
    mixed; "none"."""
    modules = list(model.modules())
    kinds = [name for name, kind in DOWNSAMPLING.items() if any(map(kind, modules))]
    return " + ".join(kinds) or "none"


def shape_tags(model: nn.Module) -> dict[str, str]:
    """Logged with each training run, so that the comparison reads what was trained instead
    of rebuilding a model from a store's contents."""
    return {"model.conv_layers": str(conv_layers(model)), "model.pooling": downsampling(model)}
