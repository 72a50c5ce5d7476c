"""One seed drives every random stream of a run, each derived from it and a purpose, so that
changing one part of a run (say, the model) never shifts the random numbers of another."""

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Global RNGs, for anything that does not take a generator (dropout, user code)."""
    random.seed(seed)
    np.random.seed(derive_seed(seed, "numpy") % (1 << 32))
    torch.manual_seed(derive_seed(seed, "torch"))


def generator(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))
