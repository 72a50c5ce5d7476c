"""A trained model (or an ensemble, ckpt=[a,b,c]) on the test set, or split=val on its run's
validation images: python scripts/evaluate.py ckpt=... [split=val] [tta=true] [log=true]"""

import hydra
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from mnist.context import JobContext
    from mnist.inference.evaluate_checkpoints import run_evaluation

    with exit_on_user_error(cfg):
        return run_evaluation(cfg, JobContext.from_hydra())[f"{cfg.split}/acc"]


if __name__ == "__main__":
    run(main)
