"""Re-run a logged run and check it matches: python scripts/reproduce.py run_id=<id>"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mnist.job import run_training
    from mnist.tools.reproduce import reproduce

    with exit_on_user_error(cfg):
        passed = reproduce(cfg, Path(HydraConfig.get().runtime.output_dir), run_training)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    run(main)
