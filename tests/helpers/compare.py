"""Configs and outputs of scripts/compare.py, for the comparison and sweep tests."""

import csv
from pathlib import Path

from hydra import compose, initialize_config_dir

from tests.helpers import CONF_DIR


def compare_config(tmp_path, *overrides, experiment="table"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        store = f"paths.mlruns={tmp_path / 'mlruns'}"
        return compose("compare", overrides=[store, f"logger.experiment={experiment}", *overrides])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
