"""scripts/export.py and mnist.inference.export: a trained model written as ONNX and as TorchScript,
run against PyTorch and in a fresh process without this package, and the failures that
must leave no file behind. An ONNX export takes ~10 s on a small CPU, so the script's
export of each format is shared by the tests of this module."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist.cli import exit_on_user_error
from mnist.context import JobContext
from mnist.errors import ConfigError, ExportError
from mnist.inference.digits import model_input
from mnist.inference.export import SUFFIXES, TOLERANCE, check_export, run_export, write_model
from mnist.inference.loading import load_model
from mnist.job import run_training
from mnist.models import build_model, model_class
from tests.helpers import CONF_DIR, compose_config, run_script, synthetic_digits, tiny_overrides


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, empty_mlflow_db, tmp_path_factory) -> Path:
    """best.pt of a tiny training run of gap20k, the model with the most kinds of layers
    (BatchNorm, a residual sum, global pooling), trained channels_last as by default."""
    tmp = tmp_path_factory.mktemp("train")
    (tmp / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp / "mlruns" / "mlflow.db")
    # Named explicitly: a module fixture runs before _local_tracking clears the variable.
    store = f"logger.tracking_uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    cfg = compose_config([*tiny_overrides(synthetic_root, tmp), "model=gap20k", store])
    run_training(cfg, JobContext(output_dir=tmp / "run"))
    return tmp / "run" / "checkpoints" / "best.pt"


@pytest.fixture(scope="module", params=list(SUFFIXES))
def exported(
    request, checkpoint, tmp_path_factory
) -> tuple[str, Path, subprocess.CompletedProcess]:
    """(format, file, the script's run): the script's export of `checkpoint`, alone in
    its directory."""
    fmt = request.param
    path = tmp_path_factory.mktemp(fmt) / f"digits{SUFFIXES[fmt]}"
    outputs = tmp_path_factory.mktemp("outputs")
    result = run_script(
        "export", f"ckpt={checkpoint}", f"format={fmt}", f"out={path}", f"paths.outputs={outputs}"
    )
    return fmt, path, result


def batches() -> list[torch.Tensor]:
    """Digit-like inputs in batches of two sizes: a fixed batch size would show."""
    images, _ = synthetic_digits(13, seed=2)
    return [model_input(images[:1]), model_input(images)]


def test_script_writes_the_file_and_says_how_to_load_it(exported, checkpoint):
    fmt, path, result = exported
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # no exporter progress, log lines or deprecation warnings
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        f"Model: {checkpoint}",
        f"Wrote {path} ({path.stat().st_size:,} bytes, {fmt})",
    ]
    difference = float(lines[2].split("PyTorch: ")[1].split()[0])
    assert 0 <= difference <= TOLERANCE
    loader = "onnxruntime.InferenceSession" if fmt == "onnx" else "torch.jit.load"
    assert lines[-3] == "Load it with:" and loader in lines[-1] and repr(str(path)) in lines[-1]


def test_exported_file_matches_pytorch_and_tells_another_model_apart(exported, checkpoint):
    fmt, path, _ = exported
    loaded = load_model(checkpoint)
    assert check_export(path, fmt, loaded.model, batches()) <= TOLERANCE
    torch.manual_seed(1)
    other = build_model(loaded.config["model"])
    assert check_export(path, fmt, other.eval(), batches()) > 100 * TOLERANCE


# A fresh process loads the file with nothing but its runtime (sys.argv[1]) and compares
# its logits with those PyTorch gave for the same inputs (saved in sys.argv[2]).
LOADERS = {
    "onnx": """
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1])
def run(images): return session.run(["logits"], {"images": images})[0]
""",
    "torchscript": """
import torch
model = torch.jit.load(sys.argv[1])
def run(images): return model(torch.from_numpy(images)).detach().numpy()
""",
}
COMPARE = """
data = np.load(sys.argv[2])
batches = [(data[f"images{i}"], data[f"logits{i}"]) for i in range(2)]
print(json.dumps({
    "sizes": [len(images) for images, _ in batches],
    "differences": [float(np.abs(run(images) - logits).max()) for images, logits in batches],
    "mnist": "mnist" in sys.modules,
}))
"""


def test_exported_file_runs_in_a_fresh_process_without_this_package(exported, checkpoint, tmp_path):
    fmt, path, _ = exported
    model = load_model(checkpoint).model
    arrays = {}
    with torch.no_grad():
        for i, batch in enumerate(batches()):
            arrays[f"images{i}"], arrays[f"logits{i}"] = batch.numpy(), model(batch).numpy()
    np.savez(tmp_path / "expected.npz", **arrays)
    code = f"import json, sys\nimport numpy as np\n{LOADERS[fmt]}{COMPARE}"
    result = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "expected.npz")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["sizes"] == [1, 13] and not report["mnist"]
    assert max(report["differences"]) <= TOLERANCE


def test_script_refuses_a_bad_format_in_one_line_and_writes_no_model(checkpoint, tmp_path):
    outputs = tmp_path / "outputs"
    result = run_script("export", f"ckpt={checkpoint}", "format=tflite", f"paths.outputs={outputs}")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: format='tflite' must be one of onnx, torchscript")
    assert not [p for p in outputs.rglob("*") if p.suffix in (".onnx", ".pt", ".tmp")]


def test_a_corrupt_checkpoint_is_refused_in_one_line_and_writes_no_model(
    checkpoint, tmp_path, capsys
):
    """In-process, as scripts/export.py runs it (exit_on_user_error)."""
    data = checkpoint.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    outputs = tmp_path / "outputs"
    cfg = export_config(broken, "format=onnx", f"paths.outputs={outputs}")
    with pytest.raises(SystemExit) as exited, exit_on_user_error(cfg):
        run_export(cfg, outputs / "job")
    assert exited.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    (line,) = printed.err.strip().splitlines()
    assert line.startswith("error: ")
    assert "not a readable checkpoint, the file is corrupt or truncated" in line
    assert not outputs.exists()


def export_config(checkpoint: Path, *overrides: str):
    return compose_config([f"ckpt={checkpoint}", *overrides], config_name="export")


def test_unusable_out_paths_are_refused_before_anything_is_written(checkpoint, tmp_path):
    saved = shutil.copy(checkpoint, tmp_path / "best.pt")
    for out, fmt, message in [
        (tmp_path / "model.pt", "onnx", "must end in .onnx for format=onnx"),
        (tmp_path, "onnx", f"is a directory; name the file, e.g. out={tmp_path / 'model.onnx'}"),
        (saved, "torchscript", "is the checkpoint itself"),
        (saved / "model.pt", "torchscript", "is not a writable directory"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            run_export(export_config(saved, f"out={out}", f"format={fmt}"), tmp_path / "run")
    assert list(tmp_path.iterdir()) == [saved]
    assert saved.read_bytes() == checkpoint.read_bytes()


def test_a_failed_check_or_an_interrupted_export_keeps_the_previous_file(
    checkpoint, tmp_path, monkeypatch
):
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    cfg = export_config(checkpoint, f"out={target}", "format=torchscript")
    monkeypatch.setattr("mnist.inference.export.check_export", lambda *args: 0.5)
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to 0\.5 "):
        run_export(cfg, tmp_path / "run")

    def interrupted(module, path):
        Path(path).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.jit, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_export(cfg, tmp_path / "run")
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"previous"


def test_without_ckpt_the_champion_is_exported_as_predict_would_use_it(tiny_cfg, tmp_path, capsys):
    """The model to ship is the one promoted (models:/mnist@champion, scripts/promote.py),
    where predict.py and Classifier.load() take it from; else the latest finished run."""
    champion = run_training(tiny_cfg(), JobContext(output_dir=tmp_path / "a"))["run_id"]
    latest = run_training(tiny_cfg("seed=1"), JobContext(output_dir=tmp_path / "b"))["run_id"]
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("mnist")
    client.create_model_version("mnist", f"runs:/{champion}/model", run_id=champion)
    client.set_registered_model_alias("mnist", "champion", "1")

    def exported(*overrides: str) -> str:
        cfg = compose_config(
            [f"paths.mlruns={tmp_path / 'mlruns'}", "format=torchscript", *overrides], "export"
        )
        run_export(cfg, tmp_path / "export")
        return capsys.readouterr().out.splitlines()[0]

    assert exported() == f"Model: models:/mnist@champion, run {champion} (checkpoints/best.pt)"
    assert exported("registered_model=null") == f"Model: run {latest} (checkpoints/best.pt)"


def test_a_channels_last_model_exports_as_a_plain_one_and_stays_as_it_was(checkpoint, tmp_path):
    model = load_model(checkpoint).model.to(memory_format=torch.channels_last)
    path = tmp_path / "model.pt"
    write_model(model, path, "torchscript")
    assert check_export(path, "torchscript", model, batches()) <= TOLERANCE
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(SUFFIXES))
def test_every_model_config_exports_and_matches(fmt, tmp_path):
    built = set()
    for config in sorted((CONF_DIR / "model").glob("*.yaml")):
        torch.manual_seed(0)
        model = build_model(OmegaConf.to_container(OmegaConf.load(config)))
        with torch.no_grad():  # BatchNorm statistics other than the initial 0 and 1
            model.train()(torch.randn(64, 1, 28, 28) * 2 + 1)
        model = model.eval().to(memory_format=torch.channels_last)
        path = tmp_path / f"{config.stem}{SUFFIXES[fmt]}"
        write_model(model, path, fmt)
        assert check_export(path, fmt, model, batches()) <= TOLERANCE, config.stem
        built.add(type(model))
    targets = {OmegaConf.load(p)._target_ for p in (CONF_DIR / "model").glob("*.yaml")}
    assert built == {model_class(target) for target in targets}
