"""The benchmark's classic side, as the PyTorch MNIST examples do it: `datasets.MNIST` +
per-sample PIL `transforms` (a twin of each augmentation op) + `DataLoader`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from mnist.data.augment import BatchAugment
from mnist.data.batches import MNIST_MEAN, MNIST_STD, batch_indices
from mnist.errors import ConfigError, DataError
from mnist.seeding import generator
from mnist.training.device import autocast

Batches = Iterator[tuple[Tensor, Tensor]]


def epoch_orders(train_idx: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    shuffle = generator(seed, "shuffle")
    while True:
        yield torch.cat(list(batch_indices(train_idx.cpu(), batch_size, shuffle, drop_last=True)))


def classic_transform(augment: BatchAugment) -> transforms.Compose:
    """The torchvision twin of each op in order, on the PIL image until RandomErasing needs
    a tensor; ConfigError for an op without a twin."""
    steps = []
    for op in augment.ops:
        if op.key == "affine":
            if op.crops:
                crop = [transforms.CenterCrop(op.crop_size), transforms.Resize(28)]
                steps.append(transforms.RandomApply(crop, p=op.crop_prob))
            if op.rotate_deg or op.translate:
                translate = (op.translate, op.translate) if op.translate else None
                steps.append(transforms.RandomAffine(degrees=op.rotate_deg, translate=translate))
        elif op.key == "erase":
            erase = transforms.RandomErasing(op.prob, tuple(op.area), tuple(op.aspect), value=0)
            steps.append(erase)
        else:
            raise ConfigError(
                f"augmentation.{op.key}: the classic pipeline has no torchvision twin of it "
                "(it mirrors affine, erase); benchmark without it"
            )
    erasing = (i for i, step in enumerate(steps) if isinstance(step, transforms.RandomErasing))
    steps.insert(next(erasing, len(steps)), transforms.ToTensor())
    return transforms.Compose([*steps, transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])


def classic_dataset(data_root: str | Path, train: bool, transform):
    raw = Path(data_root)
    if raw.name != "raw" or raw.parent.name != "MNIST":
        raise DataError(
            f"the classic pipeline reads torchvision's layout <dir>/MNIST/raw; data.root={raw}"
        )
    return datasets.MNIST(str(raw.parent.parent), train=train, download=False, transform=transform)


def classic_batches(
    data_root: str | Path, augment: BatchAugment, orders: Iterator[Tensor], batch_size: int,
    workers: int, device: torch.device,
) -> Batches:  # fmt: skip
    """One DataLoader per epoch, as in a classic training loop."""
    dataset = classic_dataset(data_root, True, classic_transform(augment))
    for order in orders:
        loader = DataLoader(
            dataset, batch_size, sampler=order.tolist(), num_workers=workers,
            pin_memory=device.type == "cuda", drop_last=True,
        )  # fmt: skip
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def classic_eval_img_s(
    model: nn.Module, data_root, batch_size: int, device: torch.device, precision: str
) -> float:
    """The PyTorch examples' test loop (each batch's .item() waits for its work)."""
    dataset = classic_dataset(data_root, False, classic_transform(BatchAugment([])))
    start = time.perf_counter()
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            model(images.to(device)).argmax(1).eq(labels.to(device)).sum().item()
    return len(dataset) / (time.perf_counter() - start)
