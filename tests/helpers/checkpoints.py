"""Checkpoints written the way the trainer writes them, for tests that load models, and a
hostile one."""

import os

import torch

from mnist.models import build_model
from mnist.training.checkpoint import save_checkpoint

SMALL_CONVNET = {
    "_target_": "mnist.models.ConvNet",
    "stages": [[4], [8]],
    "downsample": "pool",
    "hidden": None,
    "dropout": 0.0,
}


def save_model_checkpoint(path, model_config=SMALL_CONVNET, weights_from=None, **extra):
    torch.manual_seed(0)
    model = build_model(weights_from or model_config)
    state = {"model": model.state_dict(), "config": {"model": model_config, "seed": 0}}
    return save_checkpoint({**state, **extra}, path)


class RunsCommand:
    """Unpickled, it would call os.system: a module torch's weights-only unpickler blocks
    ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked")."""

    def __reduce__(self):
        return os.system, ("echo hacked",)
