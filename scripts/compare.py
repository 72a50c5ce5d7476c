"""The comparison table of a finished sweep, by default the latest:
python scripts/compare.py [logger.experiment=arch_table] [parent_run_id=<id>|all]"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    from mnist.reporting.compare import compare

    with exit_on_user_error(cfg):
        compare(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    run(main)
