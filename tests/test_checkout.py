"""A script runs the package of its own checkout: a second clone that shares the first's
environment (an editable install of the first) is refused before anything is written."""

import shutil
import subprocess
import sys

from tests.helpers import REPO_ROOT


def listing(directory):
    return sorted(directory.rglob("*")) if directory.exists() else []


def test_a_script_of_another_checkout_is_refused_before_it_writes(tmp_path):
    clone = tmp_path / "clone"
    for part in ("scripts", "conf"):
        shutil.copytree(REPO_ROOT / part, clone / part)
    outputs_before = listing(REPO_ROOT / "outputs")
    ran = subprocess.run(
        [sys.executable, str(clone / "scripts" / "train.py"), "trainer.epochs=1"],
        cwd=clone, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 2, ran.stderr[-3000:]
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(clone) in line and str(REPO_ROOT) in line
    assert sorted(path.name for path in clone.iterdir()) == ["conf", "scripts"]
    assert listing(REPO_ROOT / "outputs") == outputs_before
