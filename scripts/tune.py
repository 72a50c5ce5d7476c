"""Search hyperparameters: python scripts/tune.py hparams_search=fast n_trials=30 n_jobs=2"""

import sys

import hydra
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run
from mnist.extras import require


@hydra.main(version_base="1.3", config_path="../conf", config_name="tune")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error(cfg):
        require("optuna", "tune", "scripts/tune.py")
        from mnist.job import run_training
        from mnist.tuning.search import SearchContext, run_search

        return run_search(cfg, SearchContext.from_hydra(sys.argv), run_training)


if __name__ == "__main__":
    run(main)
