"""Fully connected baselines of the reference projects."""

from torch import Tensor, nn


class DenseNet(nn.Module):
    """784 -> hidden -> 10. Without the ReLU the two layers collapse to one linear map,
    which is exactly the reference "linear" baseline; with it, the "mlp" baseline."""

    def __init__(self, hidden: int = 10, relu: bool = True, num_classes: int = 10) -> None:
        super().__init__()
        if not isinstance(relu, bool):
            raise ValueError(f"relu={relu!r} must be true or false")
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.ReLU() if relu else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
