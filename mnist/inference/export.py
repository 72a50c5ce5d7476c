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


@contextmanager
def _without_jit_deprecation() -> Iterator[None]:
    """PyTorch deprecates TorchScript and warns on every trace, save and load: whoever asks
    for format=torchscript has chosen it, and the warnings would bury the report."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield


def _plain_copy(model: nn.Module) -> nn.Module:
    """An eval-mode fp32 CPU copy in the default memory format (training may leave a model
    on a GPU, in reduced precision or channels_last); the caller's model is untouched."""
    plain = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    return plain.eval()


def write_model(model: nn.Module, path: Path, fmt: str) -> None:
    """`model` as one file in format `fmt` at `path` (not atomically: run_export writes
    under a temporary name and keeps the file only once it is checked)."""
    plain = _plain_copy(model)
    example = model_input(torch.zeros(EXAMPLE_BATCH, 28, 28, dtype=torch.uint8))
    if fmt == "torchscript":
        # Tracing records the operations one forward pass runs; every model in
        # mnist.models has a forward without data-dependent branches, so the trace is
        # the whole model (the all-models test in tests/test_export.py checks this).
        with _without_jit_deprecation(), torch.no_grad():
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
        external_data=False,  # one self-contained file, weights included
        input_names=["images"],
        output_names=["logits"],
        verbose=False,  # else a progress line per step on stdout, amid the script's report
    )


def _runner(path: Path, fmt: str) -> Callable[[Tensor], Tensor]:
    """The exported file loaded as a user would load it, as a function of a batch."""
    if fmt == "torchscript":
        with _without_jit_deprecation():
            return torch.jit.load(str(path), map_location="cpu")
    onnxruntime = require("onnxruntime", "export", "Checking an ONNX export")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])


def check_export(path: str | Path, fmt: str, model: nn.Module, inputs: Sequence[Tensor]) -> float:
    """The largest absolute difference between the logits of the exported file and of
    `model` over `inputs` (batches of several sizes, so a fixed batch size shows). Raises
    ExportError if the file returns another shape."""
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
    """`out`, or model.onnx / model.pt in the run directory. Refuses a path that could not
    be written or whose suffix names the other format (it would fail wherever shipped)."""
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
    # Seeded noise images through model_input: the values a real input can take.
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
