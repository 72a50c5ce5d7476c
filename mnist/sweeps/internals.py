"""The private parts of Hydra and loky (joblib's process pool) that the sweep relies on, in
one place: none has a public equivalent in Hydra 1.3 or joblib. tests/test_sweep_internals.py
fails, naming the one, when an upgrade changes any of them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import run_and_report
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn

# How the sweep config names Hydra's basic sweeper (hydra.sweeper._target_).
BASIC_SWEEPER = f"{BasicSweeper.__module__}.{BasicSweeper.__name__}"


def basic_sweeper_jobs(overrides: list[Override]) -> list[list[str]]:
    """The overrides of each job in launch order, as Hydra's basic sweeper splits them."""
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def report_as_hydra(func: Callable[[], Any]) -> Any:
    """func(), with Hydra's own message and exit status 1 for what it raises (the way a
    single run reports an override that does not compose)."""
    return run_and_report(func)


def job_error(job_return: JobReturn) -> BaseException:
    """What a failed job raised. The public `return_value` raises it, after writing a line
    of its own to stderr."""
    return job_return._return_value


def joblib_workers() -> list[int]:
    """The process ids of joblib's (loky's) workers in this process; empty under another
    launcher. Read from loky's executor, the only record of them, only where joblib is
    already imported."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    return list(getattr(executor, "_processes", None) or {})
