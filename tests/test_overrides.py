"""Override keys as the project reads them agree with Hydra's own parser."""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mnist.overrides import override_key, split_override

CASES = [
    ("optimizer.lr=0.1", "optimizer.lr", "0.1"),
    ("+trainer.nosuch=1", "trainer.nosuch", "1"),
    ("++seed=3", "seed", "3"),
    ("~logger.register", "logger.register", ""),
    ("model=cnn3", "model", "cnn3"),
    ("data.root='/data/a=b'", "data.root", "'/data/a=b'"),
    ("hydra/launcher=joblib", "hydra/launcher", "joblib"),
]


@pytest.mark.parametrize(("override", "key", "value"), CASES)
def test_an_override_names_the_key_hydra_sets(override: str, key: str, value: str) -> None:
    assert split_override(override) == (key, value)
    assert override_key(override) == key
    assert OverridesParser.create().parse_override(override).key_or_group == key
