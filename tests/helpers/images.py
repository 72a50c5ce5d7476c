"""Images for the preprocessing and prediction tests: a drawn 7, and files that are bad
in each way an upload can be."""

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

from mnist.inference.images import MAX_PIXELS


def seven(width: int = 240, height: int = 180, left: int = 30, top: int = 20, scale=1.0):
    """The ink of a hand-drawn-looking 7, in [0, 1], off-centre on a width x height canvas."""
    canvas = Image.new("L", (width, height), 0)
    points = [(0, 8), (70, 0), (62, 12), (28, 110)]
    ImageDraw.Draw(canvas).line(
        [(left + scale * x, top + scale * y) for x, y in points],
        fill=255,
        width=max(2, round(9 * scale)),
        joint="curve",
    )
    return np.asarray(canvas, dtype=np.float64) / 255


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)


def encoded(image: Image.Image, file_format: str, **options) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    buffer.seek(0)
    return buffer


def bomb_png(side: int = int(MAX_PIXELS**0.5) + 1000) -> bytes:
    """A valid small PNG whose header claims a side x side canvas (by default 65 MP, over
    MAX_PIXELS and under PIL's own limits)."""
    png = encoded(Image.new("L", (8, 8)), "PNG").getvalue()
    header = b"IHDR" + struct.pack(">II", side, side) + png[24:29]
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def bad_files(tmp_path) -> dict:
    good = encoded(Image.fromarray(to_uint8(1 - seven())), "PNG").getvalue()
    files = {
        "no such file": tmp_path / "missing.png",
        "is a directory": tmp_path,
        "empty file (0 bytes)": tmp_path / "empty.png",
        "not an image": tmp_path / "notes.png",
        "truncated or corrupt": tmp_path / "truncated.png",
        "too large": tmp_path / "bomb.png",
        "no digit found": tmp_path / "blank.png",
    }
    files["empty file (0 bytes)"].write_bytes(b"")
    files["not an image"].write_text("a shopping list, not a picture\n")
    files["truncated or corrupt"].write_bytes(good[: len(good) // 2])
    files["too large"].write_bytes(bomb_png())
    Image.new("RGB", (50, 40), (200, 180, 20)).save(files["no digit found"])
    return files
