"""Overrides as the project reads them: their keys agree with Hydra's own parser, and a
value that interpolates what does not resolve is refused in one line, before anything."""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mnist.errors import ConfigError
from mnist.overrides import override_key, refuse_unresolvable, split_override
from tests.helpers import compose_config, run_script

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


@pytest.mark.parametrize(
    "value", ["${oc.env:MNIST_UNSET_VARIABLE}", "${evil:x}", "run ${trainer.nosuch}"]
)
def test_an_interpolation_that_does_not_resolve_is_named_in_one_line(value: str) -> None:
    cfg = compose_config([f"logger.run_name={value}"])
    with pytest.raises(ConfigError, match=r"^logger\.run_name=.* does not resolve \(") as e:
        refuse_unresolvable(cfg)
    assert repr(value) in str(e.value) and "\n" not in str(e.value)


def test_an_interpolation_that_resolves_or_is_escaped_is_kept() -> None:
    cfg = compose_config(["logger.run_name=${model._target_} seed ${seed}", "+x=[1,${seed}]"])
    refuse_unresolvable(cfg)
    assert (cfg.logger.run_name, cfg.x) == ("mnist.models.ConvNet seed 0", [1, 0])
    escaped = compose_config(["logger.run_name=\\${oc.env:MNIST_UNSET_VARIABLE}"])
    refuse_unresolvable(escaped)
    assert escaped.logger.run_name == "${oc.env:MNIST_UNSET_VARIABLE}"


# Issue 30: a traceback (exit 1) where the job first read the value, after Hydra had written
# outputs/<date>/<time>/ with .hydra/ and an empty log; in a sweep, before any job started.
@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("train", ["logger.run_name=${evil:x}"]),
        ("train", ["-m", "logger.run_name=${oc.env:MNIST_UNSET_VARIABLE}", "seed=0,1"]),
        ("evaluate", ["ckpt=${oc.env:MNIST_UNSET_VARIABLE}"]),
    ],
    ids=["train", "train -m", "evaluate"],
)
def test_every_command_refuses_an_unresolved_interpolation_before_writing(
    tmp_path, script: str, args: list[str]
) -> None:
    outputs, mlruns = tmp_path / "outputs", tmp_path / "mlruns"
    result = run_script(script, *args, f"paths.outputs={outputs}", f"paths.mlruns={mlruns}")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "' does not resolve (" in line
    assert not mlruns.exists()
    assert not any(path.is_file() for path in tmp_path.rglob("*"))  # no .hydra/, no log
