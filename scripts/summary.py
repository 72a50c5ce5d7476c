"""The layer table of a model, without training: python scripts/summary.py model=cnn4"""

import hydra
from omegaconf import DictConfig
from torch import nn

from mnist.cli import exit_on_user_error
from mnist.config import ConfigError
from mnist.models import UnsafeModelConfig, build_model, format_summary, summarize


def _build(model_cfg: DictConfig) -> nn.Module:
    """A model option the class refuses (model.dropout=2) is the user's to fix, like any
    other config value: a ConfigError, so that it reads as one line, not a traceback."""
    try:
        return build_model(model_cfg)
    except UnsafeModelConfig:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot build {model_cfg._target_} from model.* ({e})") from e


@hydra.main(version_base="1.3", config_path="../conf", config_name="summary")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        print(format_summary(summarize(_build(cfg.model))))


if __name__ == "__main__":
    main()
