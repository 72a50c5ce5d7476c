"""Project pipeline vs classic torchvision pipeline: python scripts/benchmark.py model=fast"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from mnist.tools.benchmark import benchmark

    with exit_on_user_error(cfg):
        benchmark(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    run(main)
