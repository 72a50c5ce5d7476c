"""scripts/export.py: a model as one ONNX or TorchScript file that runs without this package.
A file is kept only once loaded back and run against PyTorch: a shipped file cannot be fixed."""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from mnist.atomic import written_atomically
from mnist.data.batches import MNIST_MEAN, MNIST_STD
from mnist.errors import ConfigError, ExportError
from mnist.extras import require
from mnist.inference.digits import model_input
from mnist.inference.loading import load_model
from mnist.tracking import store

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
# float32 kernels that sum in another order differ by ~1e-6 on these logits; a wrongly
# exported layer differs by far more.
TOLERANCE = 1e-4
# Two sizes, so that a batch size baked into the file shows.
CHECK_BATCHES = (1, 32)
# Whoever asks for format=torchscript has chosen it; the warnings would bury the report.
warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)


def _plain_copy(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    return plain.eval()


def write_model(model: nn.Module, path: Path, fmt: str) -> None:
    """Not atomically: run_export writes under a temporary name."""
    plain = _plain_copy(model)
    # torch.export would make a batch of 1 a constant, so the example has two images.
    example = model_input(torch.zeros(2, 28, 28, dtype=torch.uint8))
    if fmt == "torchscript":
        # No model in mnist.models branches on data, so the trace is the whole model.
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(plain, (example,)), str(path))
        return
    for module in ("onnx", "onnxscript"):
        require(module, "export", "ONNX export")
    for name in ("onnxscript", "onnx_ir"):  # a dozen INFO lines per export otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.onnx.export(
        plain,
        (example,),
        path,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        external_data=False,  # one file, weights included
        input_names=["images"],
        output_names=["logits"],
        verbose=False,  # else progress lines on stdout, amid the script's report
    )


def _runner(path: Path, fmt: str) -> Callable[[Tensor], Tensor]:
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    onnxruntime = require("onnxruntime", "export", "Checking an ONNX export")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])


def check_export(path: str | Path, fmt: str, model: nn.Module, inputs: Sequence[Tensor]) -> float:
    """The largest absolute difference between the file's logits and `model`'s; ExportError
    if the file returns another shape."""
    reference, run = _plain_copy(model), _runner(Path(path), fmt)
    largest = 0.0
    with torch.inference_mode():
        for batch in inputs:
            batch = batch.to("cpu", torch.float32).contiguous()
            expected, got = reference(batch), run(batch)
            if got.shape != expected.shape:
                raise ExportError(
                    f"{path}: returned shape {tuple(got.shape)} for a batch of {len(batch)}, "
                    f"expected {tuple(expected.shape)}"
                )
            # A NaN compares as smaller than any tolerance; count it as the worst case.
            difference = (got - expected).abs().nan_to_num(nan=math.inf).max().item()
            largest = max(largest, difference)
    return largest


def _output_path(out: str | None, fmt: str, output_dir: Path) -> Path:
    """`out`, or model.onnx / model.pt in the run directory."""
    name = f"model{SUFFIXES[fmt]}"
    if out is None:
        return output_dir / name
    path = Path(str(out)).expanduser()
    if path.is_dir():
        raise ConfigError(f"out={out} is a directory; name the file, e.g. out={path / name}")
    if path.suffix != SUFFIXES[fmt]:
        raise ConfigError(f"out={out} must end in {SUFFIXES[fmt]} for format={fmt}")
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"out={out}: cannot create it, {existing} is not a writable directory")
    return path


def run_export(cfg: DictConfig, output_dir: Path) -> Path:
    """Export, check and print how to load it. ConfigError before writing anything;
    ExportError, and nothing written, when the file does not match the model."""
    fmt = cfg.format
    if not isinstance(fmt, str) or fmt not in SUFFIXES:
        raise ConfigError(f"format={fmt!r} must be one of {', '.join(SUFFIXES)}")
    path = _output_path(cfg.out, fmt, output_dir)
    ckpt = None if cfg.ckpt is None else Path(str(cfg.ckpt)).expanduser()
    if ckpt is not None and path.exists() and ckpt.exists() and path.samefile(ckpt):
        raise ConfigError(f"out={cfg.out} is the checkpoint itself; name another file")
    uri = store.tracking_uri(cfg.tracking_uri, cfg.paths.mlruns)
    loaded = load_model(cfg.ckpt, uri, cfg.registered_model)
    # Seeded noise through model_input: the values a real input can take.
    rng = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (sum(CHECK_BATCHES), 28, 28), dtype=torch.uint8, generator=rng)
    inputs = [model_input(images) for images in noise.split(CHECK_BATCHES)]
    with written_atomically(path) as staged:
        write_model(loaded.model, staged, fmt)
        difference = check_export(staged, fmt, loaded.model, inputs)
        if difference > TOLERANCE:
            raise ExportError(
                f"the {fmt} export of {loaded.source} differs from PyTorch by up to "
                f"{difference:.3g} in its logits (more than {TOLERANCE:g}), so it was not "
                f"saved. Try format={'torchscript' if fmt == 'onnx' else 'onnx'}."
            )
    load = (
        f"    import onnxruntime\n    logits = onnxruntime.InferenceSession({str(path)!r})"
        ".run(['logits'], {'images': images})[0]"
        if fmt == "onnx"
        else f"    import torch\n    logits = torch.jit.load({str(path)!r})(images)"
    )
    print(
        f"Model: {loaded.source}\n"
        f"Wrote {path} ({path.stat().st_size:,} bytes, {fmt})\n"
        f"Largest logit difference from PyTorch: {difference:.2g} on batches of "
        f"{' and '.join(map(str, CHECK_BATCHES))} images (limit {TOLERANCE:g})\n"
        f"Input `images`: float32 (N, 1, 28, 28), pixels/255 normalised as "
        f"(x - {MNIST_MEAN}) / {MNIST_STD}; output `logits`: (N, 10).\n"
        f"Load it with:\n{load}"
    )
    return path
