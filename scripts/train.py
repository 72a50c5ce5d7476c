"""Train one model (or, with -m, a sweep): python scripts/train.py model=cnn4 trainer.epochs=30"""

import hydra
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from mnist.context import JobContext
    from mnist.job import run_training

    with exit_on_user_error(cfg):
        return run_training(cfg, JobContext.from_hydra())["best/val_acc"]


if __name__ == "__main__":
    run(main)
