"""Optional TensorBoard logging next to MLflow (`logger.tensorboard=true`), for those whose
habits or tooling live there: the epoch metrics as scalars, the augmented input grid, and
weight histograms per epoch, which MLflow has no view for. Imported only when enabled:
tensorboard costs start-up time that most runs do not need."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from mnist.extras import require


class TensorBoardLog:
    """Event files in `log_dir`; `tensorboard --logdir <log_dir>` shows them."""

    def __init__(self, log_dir: Path, model: nn.Module) -> None:
        require("tensorboard", "tensorboard", "logger.tensorboard=true")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.model = model
        self.writer = SummaryWriter(str(log_dir))
        self.weights_step: int | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars under the MLflow metric names, plus a histogram of every parameter the
        first time a step is seen (the test metrics come at the last epoch's step)."""
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        if step != self.weights_step:
            for name, parameter in self.model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", parameter.detach().cpu(), step)
            self.weights_step = step
        self.writer.flush()

    def log_images(self, tag: str, images: Tensor) -> None:
        """(N, 1, H, W) images in [0, 1], shown as one grid."""
        self.writer.add_images(tag, images.detach().float().cpu().clamp(0, 1), 0)

    def close(self) -> None:
        self.writer.close()
