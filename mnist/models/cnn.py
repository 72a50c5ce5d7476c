"""Convolutional nets of the architecture comparison table."""

from collections.abc import Sequence

from torch import Tensor, nn


class CNN2(nn.Module):
    """The PyTorch examples' MNIST net (1.2M parameters, almost all in the first fc)."""

    def __init__(
        self,
        conv_dropout: float = 0.25,
        fc_dropout: float = 0.5,
        hidden: int = 128,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(conv_dropout),
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, hidden),
            nn.ReLU(),
            nn.Dropout(fc_dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _side_after(stages: Sequence[Sequence[int]], downsample: str, side: int = 28) -> int:
    """Worked out, not probed: a forward pass would update BatchNorm's statistics. Max pooling
    halves the side rounding down, a stride-2 conv rounding up."""
    for stage in stages:
        if downsample == "pool":
            side //= 2
        elif stage:
            side = (side - 1) // 2 + 1
    return side


class ConvNet(nn.Module):
    """Stages of padded conv3x3 + BatchNorm + ReLU, each ending in a 2x downsample (max
    pooling, or a stride-2 last conv), then an optional hidden fc layer with dropout."""

    def __init__(
        self,
        stages: Sequence[Sequence[int]] = ((32,), (64,), (128,)),
        downsample: str = "pool",
        hidden: int | None = 128,
        dropout: float = 0.3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be 'pool' or 'stride', got {downsample!r}")
        layers: list[nn.Module] = []
        in_channels = 1
        for stage in stages:
            for i, channels in enumerate(stage):
                last = i == len(stage) - 1
                stride = 2 if last and downsample == "stride" else 1
                layers += [
                    nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = channels
            if downsample == "pool":
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = _side_after(stages, downsample)
        if side < 1:
            raise ValueError(f"{len(stages)} pooling stages take a 28x28 image below 1x1")
        flat = in_channels * side * side
        head: list[nn.Module] = [nn.Flatten()]
        if hidden is not None:
            head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            flat = hidden
        elif dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
