"""The layer table of `model.summary()`: output shapes, parameters and multiply-accumulates
per layer, read off one forward pass."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LayerSummary:
    """One call of a leaf module (as in torchinfo)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelSummary:
    """Totals from `model.parameters()`: a container's own parameters count too."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerSummary, ...]
    total_params: int
    trainable_params: int
    macs: int


def _macs(module: nn.Module, output: Tensor) -> int:
    """Per image: a conv or linear output element is one dot product; bias adds do not count,
    nor (as in most MAC counters) BatchNorm, activations, pooling and residual adds."""
    per_image = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def summarize(model: nn.Module, input_shape: Sequence[int] = (1, 28, 28)) -> ModelSummary:
    """A zero image of `input_shape` through `model`, hooked on each leaf module. In eval mode
    under no_grad: BatchNorm statistics and RNG state stay as they were (training calls this
    between seeding and its first step)."""
    names = {module: name for name, module in model.named_modules()}
    layers: list[LayerSummary] = []

    def record(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        params = sum(p.numel() for p in module.parameters(recurse=False))
        shape = tuple(output.shape[1:])
        layers.append(
            LayerSummary(names[module], type(module).__name__, shape, params, _macs(module, output))
        )

    first = next(model.parameters())
    modes = {module: module.training for module in model.modules()}
    leaves = [module for module in model.modules() if not any(module.children())]
    handles = [module.register_forward_hook(record) for module in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return ModelSummary(
        input_shape=tuple(input_shape),
        layers=tuple(layers),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=sum(layer.macs for layer in layers),
    )


HEADER = ("Layer", "Type", "Output shape", "Params", "MACs")


def _shape(shape: Sequence[int]) -> str:
    return f"[{', '.join(map(str, shape))}]"


def format_summary(summary: ModelSummary) -> str:
    """Plain text: it reads the same in a terminal, a log and an MLflow artifact."""
    rows = [HEADER] + [
        (layer.name, layer.kind, _shape(layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}")
        for layer in summary.layers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]

    def line(row: Sequence[str]) -> str:
        text = [cell.ljust(width) for cell, width in zip(row[:3], widths[:3], strict=True)]
        numbers = [cell.rjust(width) for cell, width in zip(row[3:], widths[3:], strict=True)]
        return "  ".join(text + numbers)

    rule = "-" * len(line(HEADER))
    return "\n".join(
        [
            line(HEADER),
            rule,
            *map(line, rows[1:]),
            rule,
            f"Input shape: {_shape(summary.input_shape)}",
            f"Total parameters: {summary.total_params:,} (trainable: {summary.trainable_params:,})",
            f"MACs per image: {summary.macs:,} (≈ {summary.macs / 1e6:.3g} M)",
        ]
    )
