"""Hydra output directories (issue 30): a job's directory is named after the second it
started, and every process gets one of its own, however many start in that second."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist.context import PARENT_RUN_FILE
from mnist.paths import REPO_ROOT, unique_dir
from tests.helpers import TRAIN_SCRIPT, tiny_overrides

HYDRA_RECORD = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}


def test_each_call_creates_a_directory_of_its_own_next_to_the_taken_ones(tmp_path):
    taken = tmp_path / "2026-01-01" / "08-45-12"
    taken.mkdir(parents=True)
    (taken / "train.log").write_text("another run's log")
    assert unique_dir(str(taken)) == f"{taken}_1"
    assert unique_dir(str(taken)) == f"{taken}_2"
    assert (taken / "train.log").read_text() == "another run's log"
    fresh = tmp_path / "2026-01-02" / "09-00-00"
    assert unique_dir(str(fresh)) == str(fresh)
    assert fresh.is_dir()


@pytest.mark.parametrize("config", sorted(p.stem for p in (REPO_ROOT / "conf").glob("*.yaml")))
def test_composing_a_command_config_makes_no_directory_until_its_run_dir_is_read(config, tmp_path):
    """Before, tune.yaml and benchmark.yaml each set hydra.run.dir over train.yaml's: the
    merge resolved train.yaml's, so every search and benchmark left an empty
    outputs/<date>/<time>/ behind."""
    # Hydra merges the configs before it applies overrides: outputs/ set in the config.
    conf, outputs = tmp_path / "conf", tmp_path / "outputs"
    shutil.copytree(REPO_ROOT / "conf", conf)
    paths = conf / "paths" / "default.yaml"
    paths.write_text(paths.read_text().replace("${paths.root}/outputs", str(outputs)))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config, return_hydra_config=True)
    assert not outputs.exists()
    if "${now:" in OmegaConf.to_container(cfg.hydra.run)["dir"]:
        made = Path(cfg.hydra.run.dir)
        ancestors = [*made.relative_to(outputs).parents][:-1]  # up to outputs/
        assert made.is_dir()
        assert set(outputs.rglob("*")) == {made, *(outputs / a for a in ancestors)}


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "conf").glob("*.yaml")), ids=str)
def test_every_timestamped_output_directory_is_claimed_through_unique_dir(config):
    hydra = OmegaConf.to_container(OmegaConf.load(config)).get("hydra", {})
    for key in ("run", "sweep"):
        directory = hydra.get(key, {}).get("dir", "")
        if "${now:" in directory:
            assert directory.startswith("${unique_dir:"), f"{config.name}: hydra.{key}.dir"


def files_under(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()}


# Slow: four trainings at once (two single runs, two one-job sweeps), ~60 s on 2 cores.
@pytest.mark.slow
def test_runs_and_sweeps_started_in_the_same_second_each_keep_a_complete_record(
    synthetic_root, tmp_path
):
    """Started in the same second, two runs would get the same directory (and two sweeps
    the same sweep directory): one was refused as if the other were its resume, and its
    clean-up deleted the other's .hydra/ and train.log. A directory that stands for that
    second is given: each process must get its own, with its whole record in it. Also: the
    four find no store (tmp_path/mlruns does not exist yet), and all make it at once."""
    outputs = tmp_path / "outputs"
    overrides = [*tiny_overrides(synthetic_root, tmp_path), "trainer.epochs=1",
                 f"hydra.run.dir=${{unique_dir:{outputs}/08-45-12}}",
                 f"hydra.sweep.dir=${{unique_dir:{outputs}/multirun/08-45-12}}"]  # fmt: skip
    started = [
        subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *mode, *overrides, f"seed={seed}"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode, seed in (([], 1), ([], 2), (["-m"], 3), (["-m"], 4))
    ]
    errors = [process.communicate(timeout=600)[1][-3000:] for process in started]
    assert [process.returncode for process in started] == [0, 0, 0, 0], errors

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist").experiment_id
    runs = client.search_runs([experiment])
    children = {r.data.tags["seed"]: r for r in runs if "model" in r.data.tags}
    assert sorted(children) == ["1", "2", "3", "4"]
    run_dirs = {Path(run.data.tags["output_dir"]) for run in children.values()}
    assert len(run_dirs) == 4
    singles = {outputs / "08-45-12", outputs / "08-45-12_1"}
    assert {d for d in run_dirs if d.parent == outputs} == singles
    for seed, run in children.items():
        directory = Path(run.data.tags["output_dir"])
        assert run.info.status == "FINISHED", seed
        assert HYDRA_RECORD | {"train.log", "checkpoints/best.pt"} <= files_under(directory)
        assert f"seed: {seed}\n" in (directory / ".hydra" / "config.yaml").read_text()
        assert run.info.run_id in (directory / "train.log").read_text()
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
        assert artifacts == HYDRA_RECORD, seed

    sweep_dirs = sorted((outputs / "multirun").iterdir())
    assert [d.name for d in sweep_dirs] == ["08-45-12", "08-45-12_1"]
    parents = {(d / PARENT_RUN_FILE).read_text() for d in sweep_dirs}
    assert parents == {children[seed].data.tags["mlflow.parentRunId"] for seed in ("3", "4")}
    assert {client.get_run(parent).info.status for parent in parents} == {"FINISHED"}
