"""Model families; each `conf/model/<name>.yaml` points its `_target_` at a class here."""

from mnist.models.cnn import CNN2, ConvNet
from mnist.models.dense import DenseNet
from mnist.models.tiny import CNN24k, GAP20k
from mnist.models.vgg import TinyVGG

__all__ = ["CNN2", "CNN24k", "ConvNet", "DenseNet", "GAP20k", "TinyVGG", "count_parameters"]


def count_parameters(model) -> int:
    """Trainable parameters, the number the reference tables report."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
