"""The layer table of a model, without training: python scripts/summary.py model=cnn4"""

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="summary")
def main(cfg: DictConfig) -> None:
    from mnist.models import build_model, format_summary, summarize

    with exit_on_user_error(cfg):
        model = build_model(OmegaConf.to_container(cfg.model, resolve=True))
        print(format_summary(summarize(model)))


if __name__ == "__main__":
    run(main)
