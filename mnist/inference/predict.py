"""scripts/predict.py: one line per image named by img= (files, directories, globs), a
prediction or the reason it has none; one bad file never stops the others."""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig
from PIL import Image

from mnist.errors import ConfigError, ImageError
from mnist.inference.classifier import Classifier, Prediction
from mnist.inference.digits import to_mnist
from mnist.tracking import store

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FORMATS = ("text", "json")
# Images classified together: bounds memory on large directories.
CHUNK = 256


@dataclass
class Outcome:
    name: str
    prediction: Prediction | None = None
    error: str | None = None


def expand(specs: list[str]) -> list[Outcome]:
    """One Outcome per image file, in order (a directory's or glob's sorted by name), and
    one carrying an error for a spec naming none."""
    found = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            why = f"directory has no images ({', '.join(IMAGE_SUFFIXES)})"
        elif path.exists():
            files, why = [path], ""
        elif glob.has_magic(spec):
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            files, why = [p for p in files if p.is_file()], "no file matches this pattern"
        else:
            files, why = [], "no such file or directory"
        found += [Outcome(str(p)) for p in files] or [Outcome(spec, error=f"{spec}: {why}")]
    return found


def predict_all(classifier: Classifier, outcomes: list[Outcome], save_dir: Path | None) -> None:
    """Fill in each outcome without an error; an unreadable image becomes its error. The
    28x28 digit the model saw goes to save_dir as <stem>.png (numbered when stems repeat)."""
    todo = [outcome for outcome in outcomes if outcome.error is None]
    used: set[str] = set()
    for start in range(0, len(todo), CHUNK):
        readable = []
        for outcome in todo[start : start + CHUNK]:
            try:
                readable.append((outcome, to_mnist(outcome.name)))
            except ImageError as e:
                outcome.error = str(e)
                continue
            if save_dir is not None:
                stem, n = Path(outcome.name).stem, 1
                while (file_name := f"{stem}.png" if n == 1 else f"{stem}-{n}.png") in used:
                    n += 1
                used.add(file_name)
                Image.fromarray(readable[-1][1]).save(save_dir / file_name)
        if readable:
            predictions = classifier.classify(np.stack([digit for _, digit in readable]))
            for (outcome, _), prediction in zip(readable, predictions, strict=True):
                outcome.prediction = prediction


def as_json(outcome: Outcome) -> str:
    p = outcome.prediction
    return json.dumps({
        "path": outcome.name,
        "digit": p.digit if p else None,
        "probability": round(p.probability, 6) if p else None,
        "top3": [{"digit": d, "probability": round(q, 6)} for d, q in p.top3] if p else None,
        "error": outcome.error,
    })  # fmt: skip


def one_line(text: str) -> str:
    """Unprintable characters escaped: a file name with a newline or a bidi control cannot
    split a line of output or reorder what it shows."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def run_prediction(cfg: DictConfig) -> int:
    """Prints one line per image (text or JSON Lines); returns 1 if any image failed, else 0.
    A bad config or checkpoint raises ConfigError before anything is printed."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} must be one of {', '.join(FORMATS)}")
    img = cfg.img
    specs = [str(s) for s in img] if isinstance(img, ListConfig) else [img]
    if img is None or not all(specs):
        raise ConfigError(
            "img= is required: an image file, a directory of images or a glob, e.g. "
            "img=digit.png, img=photos/ or 'img=photos/*.jpg' (or a list: img=[a.png,b.png])"
        )
    outcomes = expand(specs)
    classifier = Classifier.load(
        cfg.ckpt, cfg.device.name, store.tracking_uri(cfg.tracking_uri, cfg.paths.mlruns),
        cfg.registered_model,
    )  # fmt: skip
    print(f"model: {classifier.source}", file=sys.stderr, flush=True)  # not in the JSON stream
    save_dir = Path(cfg.save_preprocessed) if cfg.save_preprocessed else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    predict_all(classifier, outcomes, save_dir)
    for outcome in outcomes:
        p = outcome.prediction
        if cfg.format == "json":
            print(as_json(outcome), flush=True)
        elif outcome.error:
            print(f"error: {one_line(outcome.error)}", file=sys.stderr, flush=True)
        else:
            top3 = ", ".join(f"{d} {q:.3f}" for d, q in p.top3)
            line = f"{outcome.name}: {p.digit} (probability {p.probability:.3f}; top 3: {top3})"
            print(one_line(line), flush=True)
    return 1 if any(outcome.error for outcome in outcomes) else 0
