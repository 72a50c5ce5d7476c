"""mnist.cli.run: a script exits without the interpreter's teardown, and loses nothing."""

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO_ROOT

# A script as scripts/ writes one: a library's exit hook registered while main runs, a log
# file and a line on stdout still in their buffers, then the given exit.
SCRIPT = textwrap.dedent(
    """
    import atexit, logging, sys
    from pathlib import Path
    from mnist.cli import run

    out = Path(sys.argv[1])

    def main():
        atexit.register(lambda: (out / "library_hook").write_text("ran"))
        handler = logging.FileHandler(out / "job.log", delay=True)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        logging.info("the last line of the log")
        sys.stdout.write("no newline yet")
        {end}

    run(main)
    """
)


def run_script(tmp_path, end: str) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(SCRIPT.format(end=end))
    return subprocess.run(
        [sys.executable, str(path), str(tmp_path)],
        cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("end", "status"), [("return 0.99", 0), ("sys.exit(2)", 2), ("sys.exit(None)", 0)]
)
def test_a_script_keeps_its_status_its_logs_and_the_libraries_exit_hooks(tmp_path, end, status):
    result = run_script(tmp_path, end)
    assert result.returncode == status, result.stderr
    assert result.stdout == "no newline yet"
    assert (tmp_path / "job.log").read_text() == "the last line of the log\n"
    assert (tmp_path / "library_hook").read_text() == "ran"


def test_an_exit_with_a_message_and_a_crash_exit_as_python_does(tmp_path):
    message = run_script(tmp_path, "sys.exit('error: told')")
    assert (message.returncode, message.stderr.strip()) == (1, "error: told")
    crash = run_script(tmp_path, "raise ValueError('a bug')")
    assert crash.returncode == 1
    assert "Traceback" in crash.stderr and "ValueError: a bug" in crash.stderr
    assert (tmp_path / "library_hook").read_text() == "ran"
