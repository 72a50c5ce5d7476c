"""Re-run a logged run and check it matches: python scripts/reproduce.py run_id=<id>"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error
from mnist.reproduce import reproduce


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        passed = reproduce(cfg.run_id, output_dir, cfg.tolerance, cfg.tracking_uri)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
