"""scripts/export.py: a trained model as one file that runs without this package, as ONNX
(onnxruntime, from any language) or TorchScript (torch.jit.load, no Python class needed).
Either takes the normalised float (N, 1, 28, 28) batch that mnist.inference.digits.model_input
makes, for any N, and returns the (N, 10) logits. A file is only ever kept after it has
been loaded back and run against PyTorch: a file that is shipped cannot be fixed later."""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
# torch.export specialises a dimension whose example size is 0 or 1 to that constant, so
# the example batch has two images for the batch size to stay dynamic.
EXAMPLE_BATCH = 2
# Batches the script checks the written file on: two sizes, so a batch size baked into
# the file would show.
CHECK_BATCHES = (1, 32)


def _plain_copy(model: nn.Module) -> nn.Module:
    """An eval-mode fp32 CPU copy in the default memory format: a model may be on a GPU,
    in reduced precision or channels_last (as training leaves it), and the file should
    run anywhere on the plain float32 input it documents. The caller's model is untouched."""
    plain = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    return plain.eval()


@contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """The ONNX exporter's optimiser (onnxscript, onnx_ir) logs a dozen INFO lines per
    export, which Hydra's logging config would print: only its warnings are kept."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def _torchscript_without_deprecation_warnings() -> Iterator[None]:
    """PyTorch deprecates TorchScript in favour of torch.export and warns on every trace,
    save and load. Whoever asks for format=torchscript has chosen it (ONNX is the
    default); four FutureWarnings per export would only bury the script's report."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield


def write_model(model: nn.Module, path: Path, fmt: str) -> None:
    """`model` as one file in format `fmt` at `path` (not atomically: run_export writes
    under a temporary name and keeps the file only once it is checked)."""
    plain = _plain_copy(model)
    example = model_input(torch.zeros(EXAMPLE_BATCH, 28, 28, dtype=torch.uint8))
    if fmt == "onnx":
        for module in ("onnx", "onnxscript"):
            require(module, "export", "ONNX export")
        with _quiet_onnx_exporter():
            torch.onnx.export(
                plain,
                (example,),
                path,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                external_data=False,  # one self-contained file, weights included
                input_names=["images"],
                output_names=["logits"],
                # Otherwise the exporter prints a progress line for each of its four
                # steps on stdout, in between the script's own report.
                verbose=False,
            )
    else:
        # Tracing records the operations one forward pass runs; every model in
        # mnist.models has a forward without data-dependent branches, so the trace is
        # the whole model (the all-models test in tests/test_export.py checks this).
        with _torchscript_without_deprecation_warnings(), torch.no_grad():
            torch.jit.save(torch.jit.trace(plain, (example,)), str(path))


def _runner(path: Path, fmt: str) -> Callable[[Tensor], Tensor]:
    """The exported file loaded as a user would load it, as a function of a batch."""
    if fmt == "onnx":
        onnxruntime = require("onnxruntime", "export", "Checking an ONNX export")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda batch: torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])
    with _torchscript_without_deprecation_warnings():
        return torch.jit.load(str(path), map_location="cpu")


def check_export(path: str | Path, fmt: str, model: nn.Module, inputs: Sequence[Tensor]) -> float:
    """The largest absolute difference between the logits of the exported file and of
    `model`, over `inputs`: batches of normalised images, of several sizes to check that
    the batch size stayed dynamic. Raises ExportError if the file returns another shape."""
    reference = _plain_copy(model)
    run = _runner(Path(path), fmt)
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


def _check_batches() -> list[Tensor]:
    """Seeded noise images through model_input: the values a real input can take, in
    batches of CHECK_BATCHES sizes."""
    generator = torch.Generator().manual_seed(0)
    return [
        model_input(torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator))
        for n in CHECK_BATCHES
    ]


def _output_path(out: str | None, fmt: str, output_dir: Path) -> Path:
    """Where to write: `out`, or model.onnx / model.pt in the run directory. Raises
    ConfigError for a path that could not be written or whose suffix names the other
    format (a TorchScript file named .onnx would fail wherever it is shipped)."""
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
    """Exports the model cfg.ckpt names, checks the file and prints how to load it.
    Raises ConfigError before writing anything when cfg.format, cfg.out or the checkpoint
    cannot work, and ExportError when the file does not match the model (nothing is
    written then: the file is checked under a temporary name)."""
    fmt = cfg.format
    if not isinstance(fmt, str) or fmt not in SUFFIXES:
        raise ConfigError(f"format={fmt!r} must be one of {', '.join(SUFFIXES)}")
    path = _output_path(cfg.out, fmt, output_dir)
    ckpt = None if cfg.ckpt is None else Path(str(cfg.ckpt)).expanduser()
    if ckpt is not None and path.exists() and ckpt.exists() and path.samefile(ckpt):
        raise ConfigError(f"out={cfg.out} is the checkpoint itself; name another file")
    uri = store.tracking_uri(cfg.tracking_uri, cfg.paths.mlruns)
    loaded = load_model(cfg.ckpt, uri, cfg.registered_model)
    with written_atomically(path) as staged:
        write_model(loaded.model, staged, fmt)
        difference = check_export(staged, fmt, loaded.model, _check_batches())
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
