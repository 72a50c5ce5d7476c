"""TinyVGG, the small VGG-style net of the CNN-explainer lineage used by the references."""

from torch import Tensor, nn


def _vgg_block(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class TinyVGG(nn.Module):
    """Two blocks of 2 x conv3x3 + ReLU + maxpool (28 -> 14 -> 7), then 7*7*channels -> 10."""

    def __init__(self, channels: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_vgg_block(1, channels), _vgg_block(channels, channels))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * 7 * 7, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
