"""MNIST's IDX format (http://yann.lecun.com/exdb/mnist/), read strictly: a truncated
download must never become a dataset."""

import math
import reprlib
from pathlib import Path

import numpy as np

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder(">"): code for code, dtype in _DTYPES.items()}


class IdxError(ValueError):
    """The bytes are not a well-formed IDX array."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(data) < 4:
        raise IdxError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 or zero1 or code not in _DTYPES or ndim == 0:
        raise IdxError(f"{name}: not an IDX file (magic bytes {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: header truncated ({len(data)} of {header} bytes)")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize  # exact: no int64 to overflow
    if len(data) != expected:
        # reprlib: a corrupt header may claim 255 dimensions of 2**32 - 1.
        raise IdxError(
            f"{name}: {len(data)} bytes but shape {reprlib.repr(shape)} needs "
            f"{reprlib.repr(expected)}; the file is truncated or corrupt"
        )
    try:
        array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    except ValueError as e:  # more dimensions than numpy's arrays have (64)
        raise IdxError(f"{name}: a shape of {ndim} dimensions cannot be read ({e})") from e
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path) -> np.ndarray:
    return parse_idx(Path(path).read_bytes(), Path(path).name)


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of `array`, for the tests' synthetic datasets."""
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big_endian not in _CODES:
        raise IdxError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, _CODES[big_endian], array.ndim])
    header += np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, big_endian).tobytes()
