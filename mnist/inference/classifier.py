"""The public prediction API (`from mnist import Classifier`), shared with predict.py so that
both give the same answer for the same image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist.inference.digits import model_input, to_mnist
from mnist.inference.images import ImageSource
from mnist.inference.loading import DEFAULT_REGISTERED_MODEL, load_model
from mnist.training.device import resolve_device


@dataclass(frozen=True)
class Prediction:
    digit: int
    probability: float
    top3: tuple[tuple[int, float], ...]  # (digit, probability), best first


class Classifier:
    """clf = Classifier.load("outputs/.../checkpoints/best.pt")  # or a run id, or None
    clf.predict("digit.jpg").digit"""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", source: str = ""):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.source = source

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        tracking_uri: str | None = None,
        registered_model: str | None = DEFAULT_REGISTERED_MODEL,
    ) -> Classifier:
        """`checkpoint` as mnist.inference.loading.load_model takes it."""
        loaded = load_model(checkpoint, tracking_uri, registered_model)
        return cls(loaded.model, device, loaded.source)

    @torch.inference_mode()
    def classify(self, digits: np.ndarray | torch.Tensor) -> list[Prediction]:
        """Predictions for already preprocessed uint8 (B, 28, 28) digits."""
        if len(digits) == 0:
            return []
        logits = self.model(model_input(digits).to(self.device)).float()
        probabilities, ranked = logits.softmax(1).cpu().topk(3, dim=1)
        return [
            Prediction(best[0], probs[0], tuple(zip(best, probs, strict=True)))
            for best, probs in zip(ranked.tolist(), probabilities.tolist(), strict=True)
        ]

    def predict(self, image: ImageSource) -> Prediction:
        """The digit in a path, file object, PIL image, numpy array or tensor; ImageError
        when it cannot be read."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageSource]) -> list[Prediction]:
        """One forward pass; ImageError on the first unreadable image."""
        return self.classify(np.stack([to_mnist(image) for image in images])) if images else []
