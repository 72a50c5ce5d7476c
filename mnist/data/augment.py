"""Batched augmentation on the training device: one random affine transform per sample
(rotation, translation, zoom-in crop), applied to the whole batch with a single
affine_grid + grid_sample, so no per-sample Python or PIL runs in the hot path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

IMAGE_SIZE = 28


class BatchAugment:
    """Random affine transforms with independent parameters per sample, drawn from
    `generator` so that a seed fixes every transform of a run.

    - rotate_deg: uniform rotation in [-rotate_deg, +rotate_deg].
    - translate: uniform shift in [-translate, +translate] of the image size, per axis.
    - crop_prob / crop_size: with probability crop_prob, a crop_size x crop_size centre
      crop resized back to 28 x 28 (a zoom of 28 / crop_size).
    """

    def __init__(
        self,
        rotate_deg: float = 0.0,
        translate: float = 0.0,
        crop_prob: float = 0.0,
        crop_size: int = IMAGE_SIZE,
        generator: torch.Generator | None = None,
    ) -> None:
        self.rotate_rad = math.radians(rotate_deg)
        self.translate = translate
        self.crop_prob = crop_prob
        self.crop_scale = crop_size / IMAGE_SIZE
        self.generator = generator

    @classmethod
    def from_config(cls, cfg: DictConfig, generator: torch.Generator | None) -> BatchAugment:
        """From an `augmentation` config group option (conf/augmentation/*.yaml)."""
        return cls(cfg.rotate_deg, cfg.translate, cfg.crop_prob, cfg.crop_size, generator)

    @property
    def active(self) -> bool:
        return bool(self.rotate_rad or self.translate or (self.crop_prob and self.crop_scale != 1))

    def describe(self) -> str:
        """The transforms in words, for the title of the augmentation preview."""
        parts = []
        if self.rotate_rad:
            parts.append(f"rotation ±{math.degrees(self.rotate_rad):g}°")
        if self.translate:
            parts.append(f"translation ±{100 * self.translate:g}%")
        if self.crop_prob and self.crop_scale != 1:
            parts.append(f"zoom x{1 / self.crop_scale:.2f} with p={self.crop_prob:g}")
        return ", ".join(parts) or "none"

    def _uniform(self, batch: int, low: float, high: float, device: torch.device) -> Tensor:
        draw = torch.rand(batch, generator=self.generator, device=device)
        return low + (high - low) * draw

    def __call__(self, images: Tensor) -> Tensor:
        """images: float (B, C, 28, 28) with background 0; returns the same shape/dtype."""
        if not self.active:
            return images
        batch, device = images.shape[0], images.device
        angle = self._uniform(batch, -self.rotate_rad, self.rotate_rad, device)
        # affine_grid works in [-1, 1] coordinates: a shift of f image widths is 2f.
        shift_x = self._uniform(batch, -2 * self.translate, 2 * self.translate, device)
        shift_y = self._uniform(batch, -2 * self.translate, 2 * self.translate, device)
        cropped = self._uniform(batch, 0.0, 1.0, device) < self.crop_prob
        scale = torch.where(cropped, self.crop_scale, 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
        ).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
