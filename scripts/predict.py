"""The digit in each image: python scripts/predict.py img=digit.jpg [ckpt=...] [format=json]"""

import sys

import hydra
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from mnist.inference.predict import run_prediction

    with exit_on_user_error(cfg):
        status = run_prediction(cfg)
    sys.exit(status)


if __name__ == "__main__":
    run(main)
