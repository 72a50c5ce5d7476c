"""Batched augmentation on the training device: ops applied to the whole batch at once, every
random draw from one generator. An op is a dataclass subclass of `Op`; its `key` names it in
conf/augmentation, so a stored config names ops without importing anything."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mnist.values import is_finite

IMAGE_SIZE = 28

OPS: dict[str, type[Op]] = {}


def _uniform(
    generator: torch.Generator | None, batch: int, low: float, high: float, device: torch.device
) -> Tensor:
    draw = torch.rand(batch, generator=generator, device=device)
    return low + (high - low) * draw


def _number(value: Any, low: float, high: float) -> bool:
    return is_finite(value) and low <= value <= high


def _span(value: Any, high: float) -> bool:
    return (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(_number(v, 0, high) for v in value)
        and 0 < value[0] <= value[1]
    )


class Op:
    """A batched transform of float (B, C, H, W) images in [0, 1] with background 0. A
    subclass is a frozen dataclass: its `key` names it in conf/augmentation, its fields are
    its parameters (defaults that change nothing) and `__call__` draws from `generator`.
    The rest is optional. `rules`: a parameter's (check, what it expects in words), for a
    message in words; any other bad value fails the trial call of `problems`. An inactive
    op is left out of the batch, so it draws no numbers."""

    key: ClassVar[str]
    rules: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        OPS[cls.key] = cls

    def _changed(self) -> dict[str, Any]:
        values = {f.name: (getattr(self, f.name), f.default) for f in fields(self)}
        return {
            name: value for name, (value, default) in values.items() if not _same(value, default)
        }

    @property
    def active(self) -> bool:
        """At its defaults an op changes nothing; one without parameters always changes."""
        return not fields(self) or bool(self._changed())

    def name(self) -> str:
        """Short, from the values not at their defaults: `noise(std0.1)`."""
        values = [f"{name}{_short(value)}" for name, value in self._changed().items()]
        return f"{self.key}({','.join(values)})" if values else self.key

    def describe(self) -> str:
        """Words for the preview's title, after the name; none beyond it by default."""
        return ""

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> list[str]:
        known = [f.name for f in fields(cls)]
        found = []
        for name, value in values.items():
            where = f"augmentation.{cls.key}.{name}"
            if name not in known:
                found.append(f"{where} is not a parameter of {cls.key} (known: {', '.join(known)})")
            elif name in cls.rules and not cls.rules[name][0](value):
                found.append(f"{where}={value!r} must be {cls.rules[name][1]}")
        return found or _trial_problems(cls, values)


def _same(value: Any, default: Any) -> bool:
    """A YAML list is the same value as a tuple default."""
    if isinstance(value, list):
        value = tuple(value)
    return value == default


def _short(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "-".join(_short(v) for v in value)
    return f"{value:g}" if is_finite(value) else str(value)


def _trial_problems(op: type[Op], values: Mapping[str, Any]) -> list[str]:
    """A value that no rule covers, caught on two digit-like images before a run starts:
    one line naming the op rather than a traceback, or NaN weights, mid-run."""
    images = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    images[:, :, 8:20, 12:16] = 1.0
    where = f"augmentation.{op.key} with {dict(values)}"
    try:
        built = op(**values)
        out = built(images.clone(), torch.Generator().manual_seed(0))
    except Exception as e:  # a user's op may raise anything on a bad value
        first = str(e).strip().partition("\n")[0]
        return [f"{where} fails on a batch of digits ({type(e).__name__}: {first})"]
    if not isinstance(out, Tensor) or out.shape != images.shape or not out.isfinite().all():
        return [f"{where} must return finite images of the batch's shape {tuple(images.shape)}"]
    if not built.active and not torch.equal(out, images):  # it would be left out, unseen
        return [
            f"{where} is inactive (its parameters at their defaults) but changes the images: "
            f"give {op.key}'s parameters defaults that change nothing"
        ]
    return []


@dataclass(frozen=True)
class Affine(Op):
    """A random rotation, shift (a fraction of the image per axis) and, with crop_prob, a
    centre crop resized back. Draws angle, shift x, shift y, crop per sample, in this order:
    the runs made before ops existed depend on it."""

    key: ClassVar[str] = "affine"
    rules: ClassVar = {
        "rotate_deg": (lambda v: _number(v, 0, math.inf), "a number >= 0"),
        "translate": (lambda v: _number(v, 0, 1) and v < 1, "a number in [0, 1)"),
        "crop_prob": (lambda v: _number(v, 0, 1), "a number in [0, 1]"),
        "crop_size": (
            lambda v: _number(v, 1, IMAGE_SIZE) and isinstance(v, int),
            f"an integer in [1, {IMAGE_SIZE}]",
        ),
    }
    rotate_deg: float = 0.0
    translate: float = 0.0
    crop_prob: float = 0.0
    crop_size: int = IMAGE_SIZE

    @property
    def crops(self) -> bool:
        return bool(self.crop_prob) and self.crop_size != IMAGE_SIZE

    @property
    def active(self) -> bool:
        return bool(self.rotate_deg or self.translate or self.crops)

    def name(self) -> str:
        parts = [f"rot{self.rotate_deg:g}"] if self.rotate_deg else []
        parts += [f"shift{self.translate:g}"] if self.translate else []
        parts += [f"crop{self.crop_size}p{self.crop_prob:g}"] if self.crops else []
        return f"affine({','.join(parts)})"

    def describe(self) -> str:
        parts = [f"rotation ±{self.rotate_deg:g}°"] if self.rotate_deg else []
        parts += [f"translation ±{100 * self.translate:g}%"] if self.translate else []
        if self.crops:
            parts.append(f"zoom x{IMAGE_SIZE / self.crop_size:.2f} with p={self.crop_prob:g}")
        return ", ".join(parts)

    def __call__(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.active:
            return images
        batch, device = images.shape[0], images.device
        rotate_rad = math.radians(self.rotate_deg)
        angle = _uniform(generator, batch, -rotate_rad, rotate_rad, device)
        # affine_grid works in [-1, 1] coordinates: a shift of f image widths is 2f.
        shift_x = _uniform(generator, batch, -2 * self.translate, 2 * self.translate, device)
        shift_y = _uniform(generator, batch, -2 * self.translate, 2 * self.translate, device)
        cropped = _uniform(generator, batch, 0.0, 1.0, device) < self.crop_prob
        scale = torch.where(cropped, self.crop_size / IMAGE_SIZE, 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
        ).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )


@dataclass(frozen=True)
class Erase(Op):
    """torchvision's RandomErasing, batched: with prob, a rectangle of a uniform fraction
    `area` of the image and a log-uniform `aspect` set to 0."""

    key: ClassVar[str] = "erase"
    rules: ClassVar = {
        "prob": (lambda v: _number(v, 0, 1), "a number in [0, 1]"),
        "area": (lambda v: _span(v, 1), "[low, high] with 0 < low <= high <= 1"),
        "aspect": (lambda v: _span(v, math.inf), "[low, high] with 0 < low <= high"),
    }
    prob: float = 0.0
    area: tuple[float, float] = (0.02, 0.33)
    aspect: tuple[float, float] = (0.3, 3.3)

    @property
    def active(self) -> bool:
        return bool(self.prob)

    def name(self) -> str:
        """Op's name, but the probability without its key: `erase(0.5,area0.1-0.2)`."""
        changed = {key: value for key, value in self._changed().items() if key != "prob"}
        parts = [f"{self.prob:g}", *(f"{key}{_short(value)}" for key, value in changed.items())]
        return f"erase({','.join(parts)})"

    def describe(self) -> str:
        (area_low, area_high), (aspect_low, aspect_high) = self.area, self.aspect
        return (
            f"erasing with p={self.prob:g} ({100 * area_low:g}-{100 * area_high:g}% of the "
            f"image, aspect {aspect_low:g}-{aspect_high:g})"
        )

    def __call__(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.active:
            return images
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        device = images.device
        chosen = _uniform(generator, batch, 0.0, 1.0, device) < self.prob
        area = _uniform(generator, batch, *self.area, device) * (height * width)
        log_aspect = math.log(self.aspect[0]), math.log(self.aspect[1])
        aspect = _uniform(generator, batch, *log_aspect, device).exp()
        rows = (area * aspect).sqrt().round().clamp(1, height)
        cols = (area / aspect).sqrt().round().clamp(1, width)
        top = (_uniform(generator, batch, 0.0, 1.0, device) * (height - rows + 1)).floor()
        left = (_uniform(generator, batch, 0.0, 1.0, device) * (width - cols + 1)).floor()
        y = torch.arange(height, device=device)
        x = torch.arange(width, device=device)
        in_rows = (y >= top[:, None]) & (y < (top + rows)[:, None])
        in_cols = (x >= left[:, None]) & (x < (left + cols)[:, None])
        erased = chosen[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]
        return images.masked_fill(erased[:, None], 0.0)


def augmentation_problems(section: Mapping[str, Mapping[str, Any]]) -> Iterator[str]:
    for key, values in section.items():
        if key not in OPS:
            yield f"augmentation.{key} is not an augmentation op (known: {', '.join(sorted(OPS))})"
        elif not isinstance(values, Mapping):
            yield f"augmentation.{key}={values!r} must be a mapping of {key}'s parameters"
        else:
            yield from OPS[key].problems(values)


# Before ops existed, a config held affine's parameters at its top, with its option's name.
_FLAT_FORM = {"name", "rotate_deg", "translate", "crop_prob", "crop_size"}


def stored_form(section: Mapping[str, Any]) -> Mapping[str, Any]:
    """An `augmentation` config a run stored, as ops."""
    if set(section) != _FLAT_FORM:
        return section
    return {"affine": {f.name: section[f.name] for f in fields(Affine)}}


class BatchAugment:
    def __init__(self, ops: Sequence[Op], generator: torch.Generator | None = None) -> None:
        self.ops = [op for op in ops if op.active]
        self.generator = generator

    @classmethod
    def from_config(
        cls, section: Mapping[str, Mapping[str, Any]], generator: torch.Generator | None
    ) -> BatchAugment:
        return cls([OPS[key](**values) for key, values in section.items()], generator)

    @property
    def active(self) -> bool:
        return bool(self.ops)

    @property
    def name(self) -> str:
        return "+".join(op.name() for op in self.ops) or "none"

    def describe(self) -> str:
        return "; ".join(filter(None, (op.describe() for op in self.ops)))

    def __call__(self, images: Tensor) -> Tensor:
        for op in self.ops:
            images = op(images, self.generator)
        return images
