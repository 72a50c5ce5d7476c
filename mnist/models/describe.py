"""The shape of a model as the comparison table names it (conv layers, how it downsamples),
read off the built module so that the table cannot disagree with the code."""

from torch import nn


def conv_layers(model: nn.Module) -> int:
    return sum(isinstance(module, nn.Conv2d) for module in model.modules())


def downsampling(model: nn.Module) -> str:
    """ "MaxPool", "strided conv", "global avg pool", joined with " + " when mixed; "none"."""
    modules = list(model.modules())
    kinds = [
        name
        for name, present in (
            ("MaxPool", any(isinstance(m, nn.MaxPool2d) for m in modules)),
            (
                "strided conv",
                any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in modules),
            ),
            ("global avg pool", any(isinstance(m, nn.AdaptiveAvgPool2d) for m in modules)),
        )
        if present
    ]
    return " + ".join(kinds) or "none"


def shape_tags(model: nn.Module) -> dict[str, str]:
    """Logged with each training run, so that the comparison reads what was trained instead
    of rebuilding a model from a store's contents."""
    return {"model.conv_layers": str(conv_layers(model)), "model.pooling": downsampling(model)}
