"""The best model of a sweep, by validation accuracy, as models:/<name>@champion:
python scripts/promote.py [parent_run_id=<id>] [name=mnist]"""

import hydra
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="../conf", config_name="promote")
def main(cfg: DictConfig) -> None:
    from mnist.tracking.registry import promote_sweep
    from mnist.tracking.store import tracking_uri
    from mnist.tracking.ui import how_to_open, version_path

    with exit_on_user_error():
        uri = tracking_uri(cfg.logger.tracking_uri, cfg.paths.mlruns)
        promotion = promote_sweep(
            uri, cfg.logger.experiment, cfg.parent_run_id, cfg.name, cfg.alias
        )
        print(promotion)
        if hint := how_to_open(uri, version_path(promotion.name, promotion.version)):
            print(f"See it: {hint}")


if __name__ == "__main__":
    run(main)
