"""A model's shape as the comparison table names it, read off the built module."""

from collections.abc import Callable

from torch import nn
from torch.nn.modules import pooling


def conv_layers(model: nn.Module) -> int:
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


def _strided_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and max(module.stride) > 1


def _adaptive(module: nn.Module, kind: type[nn.Module], to_one: bool) -> bool:
    """An adaptive pooling layer of `kind`, global where it pools to one value per channel."""
    if not isinstance(module, kind):
        return False
    size = module.output_size
    return to_one is all(n == 1 for n in (size if isinstance(size, tuple) else (size,)))


# Every pooling layer torch has, and strided convolutions, in the order names are joined.
DOWNSAMPLING: dict[str, Callable[[nn.Module], bool]] = {
    "MaxPool": lambda m: isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                                        nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)),
    "strided conv": _strided_conv,
    "AvgPool": lambda m: isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)),
    "LPPool": lambda m: isinstance(m, (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d)),
    "global max pool": lambda m: _adaptive(m, pooling._AdaptiveMaxPoolNd, to_one=True),
    "adaptive max pool": lambda m: _adaptive(m, pooling._AdaptiveMaxPoolNd, to_one=False),
    "global avg pool": lambda m: _adaptive(m, pooling._AdaptiveAvgPoolNd, to_one=True),
    "adaptive avg pool": lambda m: _adaptive(m, pooling._AdaptiveAvgPoolNd, to_one=False),
}  # fmt: skip


def downsampling(model: nn.Module) -> str:
    modules = list(model.modules())
    kinds = [name for name, kind in DOWNSAMPLING.items() if any(map(kind, modules))]
    return " + ".join(kinds) or "none"


def shape_tags(model: nn.Module) -> dict[str, str]:
    """Logged with each run: the comparison reads what was trained, rebuilding nothing."""
    return {"model.conv_layers": str(conv_layers(model)), "model.pooling": downsampling(model)}
