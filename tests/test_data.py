import gzip
import hashlib

import numpy as np
import pytest
import torch

import mnist.data.fetch as data_module
from mnist.data.batches import batch_indices
from mnist.data.fetch import ensure_mnist
from mnist.data.idx import IdxError, encode_idx, parse_idx
from mnist.data.tensors import load_mnist, split_indices
from mnist.errors import DataError
from tests.helpers import write_synthetic_mnist

IDX_4, IDX_255 = b"\x00\x00\x08\x04", b"\x00\x00\x08\xff"  # uint8, of 4 and 255 dimensions


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.arange(10, dtype=np.uint8),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
        np.arange(-3, 3, dtype=np.int32),
    ],
)
def test_idx_round_trip(array):
    parsed = parse_idx(encode_idx(array))
    assert parsed.shape == array.shape
    np.testing.assert_array_equal(parsed, array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00\x08", "too short"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "header truncated"),
        (encode_idx(np.zeros((3, 28, 28), np.uint8))[:-1], "truncated or corrupt"),
        (encode_idx(np.zeros(4, np.uint8)) + b"\x00", "truncated or corrupt"),
        # Issue 30: a header of 255 dimensions of 2**32 - 1 (a 3 KB message), sizes past
        # int64 (which wrapped to a negative size), more dimensions than numpy's arrays have
        # (numpy's ValueError), each a short line.
        (IDX_255 + np.full(255, 2**32 - 1, ">u4").tobytes(), r"\(4294967295, .*, \.\.\.\) needs"),
        (IDX_4 + np.full(4, 2**32 - 1, ">u4").tobytes(), f"needs {20 + (2**32 - 1) ** 4};"),
        (IDX_255 + np.ones(255, ">u4").tobytes() + b"\x05", "255 dimensions cannot be read"),
    ],
)
def test_malformed_idx_is_refused(data, message):
    with pytest.raises(IdxError, match=message) as refused:
        parse_idx(data, "x")
    assert len(str(refused.value)) < 300 and "\n" not in str(refused.value)


@pytest.mark.parametrize("labels", [np.array([0, -1, 9, -1], np.int8), np.array([2.5, 3, 3, 3])])
def test_labels_that_are_not_digits_are_refused_with_the_file_and_values(tmp_path, labels):
    """With data.verify_checksums=false, labels of -1 (int8) were loaded, and the split's
    bincount failed with a traceback; 2.5 (float) trained as a 2."""
    root = write_synthetic_mnist(tmp_path / "raw", 4, 20)
    (root / "train-labels-idx1-ubyte").write_bytes(encode_idx(labels))
    with pytest.raises(DataError) as refused:
        load_mnist(root)
    bad = labels[(labels < 0) | (labels != labels.round())][0]
    assert str(refused.value).startswith(
        f"{root / 'train-labels-idx1-ubyte'}: labels must be digits 0-9, found [{bad}]; "
    )


def _checksums_of(root):
    return {
        name: hashlib.sha256((root / name).read_bytes()).hexdigest()
        for name in data_module.MNIST_SHA256
    }


def test_file_with_wrong_checksum_is_refused_by_name(tmp_path):
    root = write_synthetic_mnist(tmp_path / "raw", 50, 20)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*does not match") as e:
        ensure_mnist(root)
    assert (root / "train-images-idx3-ubyte").exists()  # the user's file is left alone
    assert "Delete it" in str(e.value)


def test_unverified_files_are_accepted_when_verification_is_off(tmp_path):
    root = write_synthetic_mnist(tmp_path / "raw", 50, 20)
    assert ensure_mnist(root, verify=False) == root


def test_gz_files_are_decompressed_and_verified(tmp_path, monkeypatch):
    source = write_synthetic_mnist(tmp_path / "src", 50, 20)
    monkeypatch.setattr(data_module, "MNIST_SHA256", _checksums_of(source))
    root = tmp_path / "raw"
    root.mkdir()
    for name in data_module.MNIST_SHA256:
        (root / f"{name}.gz").write_bytes(gzip.compress((source / name).read_bytes()))
    ensure_mnist(root)
    for name in data_module.MNIST_SHA256:
        assert (root / name).read_bytes() == (source / name).read_bytes()
    assert not list(root.glob(".*"))  # no temporary leftovers


def test_corrupt_download_is_never_left_behind_and_the_error_lists_what_was_tried(
    tmp_path, monkeypatch
):
    source = write_synthetic_mnist(tmp_path / "src", 50, 20)
    monkeypatch.setattr(data_module, "MNIST_SHA256", _checksums_of(source))
    root = tmp_path / "raw"
    root.mkdir()
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the labels"))

    def broken_mirror(root, names, verify):
        raise DataError("mirror unreachable")

    monkeypatch.setattr(
        data_module,
        "_SOURCES",
        [("local .gz files", data_module._from_local_gz), ("test mirror", broken_mirror)],
    )
    with pytest.raises(DataError) as e:
        ensure_mnist(root)
    message = str(e.value)
    assert "t10k-labels-idx1-ubyte" in message and "does not match" in message
    assert "test mirror: mirror unreachable" in message
    assert "by hand" in message
    assert [p.name for p in root.iterdir()] == ["t10k-labels-idx1-ubyte.gz"]


def test_load_gives_uint8_images_and_int64_labels(synthetic_root):
    data = load_mnist(synthetic_root)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (600, 28, 28)
    assert data.test_labels.dtype == torch.int64 and data.test_labels.shape == (200,)


def test_load_refuses_truncated_files_with_the_file_name(tmp_path):
    root = write_synthetic_mnist(tmp_path / "raw", 50, 20)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist(root)


def test_split_is_a_disjoint_cover_of_the_requested_size():
    labels = torch.arange(1000) % 10
    train, val = split_indices(labels, 150, seed=0)
    assert len(val) == 150 and len(train) == 850
    assert sorted(torch.cat([train, val]).tolist()) == list(range(1000))


def test_stratified_split_keeps_class_proportions():
    labels = torch.cat([torch.zeros(900), torch.ones(100)]).long()
    _, val = split_indices(labels, 100, seed=3, stratify=True)
    assert torch.bincount(labels[val], minlength=2).tolist() == [90, 10]


def test_split_depends_only_on_seed_not_on_global_rng():
    labels = torch.arange(500) % 10
    torch.manual_seed(1)
    first = split_indices(labels, 50, seed=7)
    torch.manual_seed(2)
    torch.rand(100)  # as building a different model would
    second = split_indices(labels, 50, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[1], split_indices(labels, 50, seed=8)[1])


@pytest.mark.parametrize("val_size", [0, 500, -1])
def test_split_refuses_impossible_sizes(val_size):
    with pytest.raises(DataError, match="val_size"):
        split_indices(torch.arange(500) % 10, val_size, seed=0)


def test_batches_cover_all_indices_and_reshuffle_deterministically():
    indices = torch.arange(10, 110)

    def epoch(seed):
        return list(batch_indices(indices, 32, torch.Generator().manual_seed(seed)))

    batches = epoch(0)
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert sorted(torch.cat(batches).tolist()) == indices.tolist()
    assert all(torch.equal(a, b) for a, b in zip(batches, epoch(0), strict=True))
    assert not torch.equal(batches[0], epoch(1)[0])


def test_drop_last_drops_only_a_short_tail():
    assert [len(b) for b in batch_indices(torch.arange(100), 32, drop_last=True)] == [32] * 3
    assert [len(b) for b in batch_indices(torch.arange(20), 32, drop_last=True)] == [20]
