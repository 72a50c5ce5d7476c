"""A trained model as a file to ship: python scripts/export.py ckpt=... [format=torchscript]"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run
from mnist.errors import ExportError


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from mnist.inference.export import run_export

    with exit_on_user_error(cfg):
        try:
            run_export(cfg, Path(HydraConfig.get().runtime.output_dir))
        except ExportError as e:
            # Not the user's to fix, unlike what exit_on_user_error handles (status 2).
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    run(main)
