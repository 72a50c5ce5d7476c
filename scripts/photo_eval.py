"""Accuracy on photo-like digits vs the originals: python scripts/photo_eval.py ckpt=... n=2000"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="photo_eval")
def main(cfg: DictConfig) -> None:
    from mnist.tools.photo_eval import run_photo_eval

    with exit_on_user_error(cfg):
        run_photo_eval(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    run(main)
