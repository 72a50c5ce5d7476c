"""Parameter-budget nets of the references: under 25k and under 20k parameters."""

from torch import Tensor, nn


class CNN24k(nn.Module):
    """The reference's budget net: exactly 24,488 parameters."""

    def __init__(self, hidden: int = 50, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 8, 3),  # 28 -> 26
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 13
            nn.Conv2d(8, 16, 3),  # -> 11
            nn.ReLU(),
            nn.Conv2d(16, 24, 3),  # -> 9
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 4
            nn.Flatten(),
            nn.Linear(24 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _conv_bn(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
    )


class GAP20k(nn.Module):
    """Under 20k parameters, no fully connected layer. Each `tail` 3x3 conv at 7x7 widens what
    a class-map cell sees by 8 pixels (without them, 16x16 of the 28x28 digit)."""

    def __init__(
        self, width: int = 16, dropout: float = 0.05, tail: int = 0, num_classes: int = 10
    ) -> None:
        super().__init__()
        wide = 2 * width
        self.stem = nn.Sequential(
            _conv_bn(1, width),
            nn.ReLU(inplace=True),
            _conv_bn(width, width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Dropout(dropout),
            _conv_bn(width, wide),
            nn.ReLU(inplace=True),
        )
        self.residual = _conv_bn(wide, wide)
        convs = [layer for _ in range(tail) for layer in (_conv_bn(wide, wide), nn.ReLU())]
        self.head = nn.Sequential(
            nn.MaxPool2d(2),  # 14 -> 7
            *convs,
            nn.Dropout(dropout),
            nn.Conv2d(wide, num_classes, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.relu(x + self.residual(x))
        return self.head(x)
