"""Configs that come from outside the command line (a checkpoint's, an MLflow run's
config.yaml) are data: read as written, refused if they hold an interpolation, and they
build nothing unless every `_target_` in them is on the allowlist: a hostile last.pt,
best.pt or run must not be able to run code or read the environment."""

import copy
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist.cli import exit_on_user_error
from mnist.context import JobContext
from mnist.errors import ConfigError
from mnist.inference.loading import load_model
from mnist.job import run_training
from mnist.targets import refuse_unsafe_config, targets_in
from mnist.tools.reproduce import reproduce
from mnist.tracking.store import get_or_create_experiment
from mnist.training.checkpoint import save_checkpoint
from tests.helpers import compose_config, tiny_overrides
from tests.helpers.checkpoints import SMALL_CONVNET, save_model_checkpoint

PRECIOUS = "precious data"


@pytest.fixture
def victims(tmp_path):
    """What a foreign `_target_` would harm: a file it would empty or overwrite, and a
    directory it would create."""
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text(PRECIOUS)
    (tmp_path / "payload.txt").write_text("overwritten")
    return sentinel, tmp_path / "created-by-payload"


def payloads(tmp_path) -> dict[str, dict]:
    sentinel, directory = tmp_path / "sentinel.txt", tmp_path / "created-by-payload"
    return {
        "open": {"_target_": "builtins.open", "file": str(sentinel), "mode": "w"},
        "copyfile": {
            "_target_": "shutil.copyfile",
            "src": str(tmp_path / "payload.txt"),
            "dst": str(sentinel),
        },
        "makedirs": {"_target_": "os.makedirs", "name": str(directory)},
    }


def plant(config: dict, place: str, payload: dict) -> dict:
    """`config` with `payload` where a config can hold a `_target_`."""
    config = copy.deepcopy(config)
    if place == "model":  # replaces the model's own target
        config["model"] = {**config["model"], **payload}
    elif place == "model value":
        config["model"]["hidden"] = payload
    elif place == "model list":
        config["model"]["stages"] = [[4], [payload]]
    elif place == "optimizer":  # called at once, not later: Hydra's `_partial_: false`
        config["optimizer"] = {**payload, "_partial_": False, "lr": 0.001}
    elif place == "optimizer value":
        config["optimizer"]["weight_decay"] = payload
    elif place == "optimizer list":
        config["optimizer"]["betas"] = [0.9, payload]
    elif place == "scheduler":
        config["scheduler"]["_target_"] = payload["_target_"]
    elif place == "augmentation":
        config["augmentation"]["extra"] = payload
    elif place == "nested value":
        config["trainer"]["early_stopping"]["extra"] = {"deeper": payload}
    elif place == "top-level list":
        config["callbacks"] = [{"ok": 1}, payload]
    return config


PLACES = [
    "model",
    "model value",
    "model list",
    "optimizer",
    "optimizer value",
    "optimizer list",
    "scheduler",
    "augmentation",
    "nested value",
    "top-level list",
]
CASES = list(itertools.product(PLACES, ["open", "copyfile", "makedirs"]))


def assert_untouched(victims) -> None:
    sentinel, directory = victims
    assert sentinel.read_text() == PRECIOUS
    assert not directory.exists()


def last_pt(tmp_path, config: dict):
    """A last.pt as a hostile user would hand it over: plain data, so it loads with
    weights_only=True, and a config of their choosing."""
    state = {"model": {}, "progress": {}, "mlflow_run_id": "0" * 32, "config": config}
    return save_checkpoint(state, tmp_path / "last.pt")


@pytest.fixture(scope="module")
def base_cfg(synthetic_root, tmp_path_factory):
    """One composed tiny config for the whole table (composing takes a while)."""
    return compose_config(tiny_overrides(synthetic_root, tmp_path_factory.mktemp("table")))


@pytest.mark.parametrize(("place", "payload"), CASES, ids=[f"{p}-{t}" for p, t in CASES])
def test_resume_refuses_a_foreign_target_anywhere_in_the_checkpoint(
    base_cfg, tmp_path, victims, place, payload
):
    config = OmegaConf.to_container(base_cfg, resolve=True)
    path = last_pt(tmp_path, plant(config, place, payloads(tmp_path)[payload]))
    cfg = base_cfg.copy()
    cfg.trainer.resume = str(path)
    with pytest.raises(ConfigError) as refused:
        run_training(cfg, JobContext(output_dir=tmp_path / "o"))
    message = str(refused.value)
    assert message.startswith(str(path)) and "refusing its config" in message
    assert "\n" not in message
    assert_untouched(victims)
    assert not (tmp_path / "o").exists()


def test_training_refuses_a_hostile_last_pt_in_one_line(synthetic_root, tmp_path, victims, capsys):
    """In-process, as scripts/train.py runs the job (exit_on_user_error)."""
    config = OmegaConf.to_container(
        compose_config([f"data.root={synthetic_root}", "data.verify_checksums=false",
                        f"paths.mlruns={tmp_path / 'mlruns'}", "device=cpu"]),
        resolve=True,
    )  # fmt: skip
    path = last_pt(tmp_path, plant(config, "optimizer value", payloads(tmp_path)["open"]))
    cfg = compose_config([f"trainer.resume={path}", f"paths.outputs={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
        run_training(cfg, JobContext(output_dir=tmp_path / "out" / "job"))
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refusing its config" in lines[0]
    assert "optimizer.weight_decay._target_='builtins.open'" in lines[0]
    assert_untouched(victims)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("place", ["optimizer", "optimizer value", "scheduler", "nested value"])
def test_prediction_evaluation_and_export_refuse_a_hostile_checkpoint(tmp_path, victims, place):
    """Loading a model builds the model only; a config that names anything foreign is
    still refused as a whole, as it is no checkpoint this project wrote."""
    config = {
        "model": SMALL_CONVNET,
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001},
        "scheduler": {"name": "none"},
        "trainer": {"early_stopping": {}},
    }
    planted = plant(config, place, payloads(tmp_path)["open"])
    path = save_model_checkpoint(tmp_path / "best.pt", config=planted, weights_from=SMALL_CONVNET)
    with pytest.raises(ConfigError, match=r"^.*best\.pt: refusing its config"):
        load_model(path)
    assert_untouched(victims)


def test_reproduce_refuses_a_run_whose_config_yaml_names_a_foreign_target(
    tiny_cfg, tmp_path, victims
):
    config = OmegaConf.to_container(tiny_cfg(), resolve=True)
    planted = plant(config, "optimizer value", payloads(tmp_path)["open"])
    _, reproduction = reproduction_of(tmp_path, OmegaConf.to_yaml(planted))
    with pytest.raises(ConfigError, match=r"its config\.yaml\): refusing its config"):
        reproduction()
    assert_untouched(victims)


def test_allowed_targets_pass_and_every_target_is_found():
    config = OmegaConf.to_container(compose_config(["optimizer=sgd"]), resolve=True)
    refuse_unsafe_config(config, "config")
    assert sorted(targets_in(config)) == [
        ("model", "mnist.models.ConvNet"),
        ("optimizer", "torch.optim.SGD"),
    ]
    assert list(targets_in({"a": [{"b": {"_target_": "x"}}]})) == [("a[0].b", "x")]


TOKEN = "tok-3141"
INTERPOLATIONS = {
    "environment": ("logger.run_name", "${oc.env:MY_TOKEN}"),
    "another key": ("model._target_", "${evil}"),
    "unknown resolver": ("optimizer.weight_decay", "${evil:x}"),
    "inside a string": ("trainer.early_stopping.extra", "pre-${oc.env:MY_TOKEN}-post"),
}


@pytest.mark.parametrize("case", INTERPOLATIONS)
def test_an_interpolation_anywhere_in_a_stored_config_is_refused_unresolved(monkeypatch, case):
    key, text = INTERPOLATIONS[case]
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    config = OmegaConf.create({"evil": "builtins.exec", "optimizer": {}})
    OmegaConf.update(config, key, text, force_add=True)
    for stored in (config, OmegaConf.to_container(config)):  # a config.yaml, a checkpoint's
        with pytest.raises(ConfigError) as refused:
            refuse_unsafe_config(stored, "stored")
        assert str(refused.value) == (
            f"stored: refusing its config, which holds the interpolation {key}={text!r}: "
            "a stored config is read as written, so it may hold values only"
        )


def test_reproduce_refuses_a_config_yaml_that_reads_the_environment(tiny_cfg, tmp_path):
    """Before, the reproduction was named after the token."""
    config = OmegaConf.to_container(tiny_cfg(), resolve=True)
    config["logger"]["run_name"] = "${oc.env:MY_TOKEN}"
    _, reproduction = reproduction_of(tmp_path, OmegaConf.to_yaml(config))
    with pytest.raises(ConfigError, match=r"interpolation logger\.run_name="):
        reproduction()
    assert not (tmp_path / "reproduction").exists()


def test_resume_and_loading_refuse_a_checkpoint_config_with_an_interpolation(base_cfg, tmp_path):
    config = OmegaConf.to_container(base_cfg, resolve=True)
    config["logger"]["run_name"] = "${oc.env:MY_TOKEN}"
    cfg = base_cfg.copy()
    cfg.trainer.resume = str(last_pt(tmp_path, config))
    with pytest.raises(ConfigError, match=r"interpolation logger\.run_name="):
        run_training(cfg, JobContext(output_dir=tmp_path / "o"))
    planted = {"model": SMALL_CONVNET, "logger": {"run_name": "${oc.env:MY_TOKEN}"}}
    best = save_model_checkpoint(tmp_path / "best.pt", config=planted, weights_from=SMALL_CONVNET)
    with pytest.raises(ConfigError, match=r"best\.pt: refusing .* interpolation"):
        load_model(best)  # predict, evaluate and export load through it


NOT_A_CONFIG = {
    "python tag": ('!!python/object/apply:os.system ["touch {victim}"]',
                   "not a readable YAML config (could not determine a constructor for the "
                   "tag 'tag:yaml.org,2002:python/object/apply:os.system', line 1)"),
    "invalid YAML": ("model: [1, 2\nseed: 0", "not a readable YAML config (expected ',' or ']'"),
    "a list": ("- model\n- seed", "holds a YAML list, not a config"),
    "incomplete": ("seed: 0", "its config.yaml is incomplete or invalid (Missing key logger)"),
}  # fmt: skip


def reproduction_of(tmp_path: Path, config_yaml: str) -> tuple[str, Callable[[], object]]:
    """(the id of a run in tmp_path's store whose config.yaml artifact is `config_yaml`, a
    call that reproduces it). Its artifacts lie beside the store, as the project places
    them (MLflow's default is ./mlruns of the working directory)."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "config.yaml").write_text(config_yaml)
    client = MlflowClient(uri)
    run_id = client.create_run(get_or_create_experiment(uri, "shared")).info.run_id
    client.log_artifact(run_id, str(tmp_path / "config.yaml"))
    cfg = compose_config(
        [f"run_id={run_id}", f"tracking_uri={uri}", f"paths.mlruns={tmp_path}"],
        config_name="reproduce",
    )
    return run_id, lambda: reproduce(cfg, tmp_path / "reproduction", run_training)


@pytest.mark.parametrize("case", NOT_A_CONFIG)
def test_reproduce_refuses_a_config_yaml_that_is_no_config_in_one_line(tiny_cfg, tmp_path, case):
    """A traceback of PyYAML's or OmegaConf's before (exit 1, the directory left behind)."""
    text, message = NOT_A_CONFIG[case]
    victim = tmp_path / "created-by-payload"
    tiny_cfg()  # the SQLite store
    run_id, reproduction = reproduction_of(tmp_path, text.format(victim=victim))
    with pytest.raises(ConfigError) as refused:
        reproduction()
    assert str(refused.value).startswith(f"run_id={run_id}")
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not victim.exists() and not (tmp_path / "reproduction").exists()
