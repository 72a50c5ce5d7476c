"""The environment the Makefile builds and the install commands the project documents: an
extra installed the documented way removes nothing, and make repairs an environment an exact
`uv sync` by hand has stripped (slow: a throwaway environment from uv's cache, offline)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mnist.extras import missing
from mnist.paths import REPO_ROOT

# Where the project tells a user what to run.
DOCUMENTED = (
    "README.md",
    "Makefile",
    *(f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md")),
)


def _documented_texts() -> dict[str, str]:
    texts = {name: (REPO_ROOT / name).read_text() for name in DOCUMENTED}
    texts["the missing-extra error"] = missing("no_such_module", "export", "feature") or ""
    return texts


def test_every_documented_install_command_adds_and_removes_nothing():
    """`uv sync` without --inexact is exact: it removes every package it is not told to
    keep. The project is not on PyPI: pip installs it from the checkout."""
    commands = 0
    for where, text in _documented_texts().items():
        for command in re.findall(r"(?:uv|\$\(UV\)) sync[^`\n)]*", text):
            commands += 1
            assert "--inexact" in command, f"{where}: {command}"
        assert "mnist-hydra[" not in text, where
        for command in re.findall(r"pip install [^`\n]*\[", text):
            commands += 1
            assert command.startswith("pip install -e '.["), f"{where}: {command}"
    assert commands >= 4  # the Makefile, docs/configuration.md and the error, at least


def _installed(venv: Path) -> set[str]:
    return {p.name for p in venv.glob("lib/python*/site-packages/*.dist-info")}


# A throwaway environment with every extra, hard-linked from uv's cache (no network): ~1 min.
@pytest.mark.slow
def test_make_repairs_an_environment_an_exact_sync_stripped(tmp_path):
    if shutil.which("uv") is None or shutil.which("make") is None:
        pytest.skip("needs uv and make on PATH")
    for name in ("Makefile", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "mnist", tmp_path / "mnist")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env |= {"UV_OFFLINE": "1"}

    def run(*command: str) -> None:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]

    make = ("make", "setup-all", "UV=uv", "UV_COMPILE_BYTECODE=0")
    run(*make)
    everything = _installed(tmp_path / ".venv")
    assert any(name.startswith("pytest-") for name in everything)

    # The documented command (the missing-extra error names it) adds the extra, keeps the rest.
    documented = missing("no_such_module", "export", "feature").split(": ", 1)[1]
    run(*documented.partition("  (")[0].split())
    assert _installed(tmp_path / ".venv") == everything

    # An exact sync by hand strips the other extras; make's next run puts them back.
    run("uv", "sync", "--frozen", "--extra", "export")
    stripped = _installed(tmp_path / ".venv")
    assert any(name.startswith("pytest-") for name in everything - stripped)
    run(*make)
    assert _installed(tmp_path / ".venv") == everything
