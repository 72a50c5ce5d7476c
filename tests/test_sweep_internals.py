"""The private parts of Hydra and loky that mnist/sweeps reads still behave as it expects: an
upgrade that changes one fails here, naming it, rather than in a sweep."""

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import run_and_report
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus

from mnist.sweeps.stop import joblib_workers


def test_basic_sweeper_split_arguments_gives_the_jobs_in_launch_order():
    overrides = OverridesParser.create().parse_overrides(["model=a,b", "seed=0,1"])
    jobs = [
        ["model=a", "seed=0"],
        ["model=a", "seed=1"],
        ["model=b", "seed=0"],
        ["model=b", "seed=1"],
    ]
    split = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    assert split == jobs, (
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments changed"
    )
    assert BasicSweeper.__module__ == "hydra._internal.core_plugins.basic_sweeper"


def test_run_and_report_returns_the_value_and_exits_1_on_an_error(capsys):
    assert run_and_report(lambda: 3) == 3, "hydra._internal.utils.run_and_report"

    def fail():
        raise ValueError("bad override")

    with pytest.raises(SystemExit) as exited:
        run_and_report(fail)
    assert exited.value.code == 1, "hydra._internal.utils.run_and_report no longer exits 1"
    assert "bad override" in capsys.readouterr().err


def test_a_failed_job_return_holds_its_exception():
    error = ValueError("crash")
    job_return = JobReturn(status=JobStatus.FAILED)
    job_return.return_value = error
    assert job_return._return_value is error, "hydra JobReturn._return_value changed"


def test_loky_executor_lists_its_worker_processes():
    from joblib.externals.loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=1)
    try:
        assert executor.submit(abs, -1).result(timeout=120) == 1
        workers = joblib_workers()
        assert len(workers) == 1 and all(isinstance(pid, int) for pid in workers), (
            "loky's reusable_executor._executor._processes changed"
        )
    finally:
        executor.shutdown(wait=True)
