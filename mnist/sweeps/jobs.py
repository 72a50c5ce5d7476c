"""Every job of a sweep, composed and validated before the sweep starts: a bad value or an
unknown key in `-m model=cnn3,cnn4 optimizer.lr=0.1,-1` is refused as it is in a single
run (one line, nothing in MLflow, nothing on disk), not when the sweep reaches that job
after a parent run was opened and the jobs before it ran."""

from __future__ import annotations

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from mnist.cli import exit_on_user_error
from mnist.errors import ConfigError
from mnist.overrides import refuse_unresolvable, task_overrides
from mnist.sweeps.internals import BASIC_SWEEPER, basic_sweeper_jobs, report_as_hydra


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of each job in launch order, as Hydra's basic sweeper (every sweep of
    this project, whatever the launcher) computes them from its params and the command
    line; None under another sweeper, whose jobs are only known as it runs them."""
    if config.hydra.sweeper._target_ != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.params or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *task_overrides(config.hydra)])
    return basic_sweeper_jobs(overrides)


def refuse_invalid_sweep(config: DictConfig) -> None:
    """Exit as a single run with the first invalid job's config would: status 1 with
    Hydra's own message for overrides that do not compose (Hydra ignores what a callback
    raises, so its reporting is called here), status 2 with one line for invalid values."""

    def validate() -> None:
        with exit_on_user_error(config):
            validate_sweep(config)

    report_as_hydra(validate)


def validate_sweep(config: DictConfig) -> None:
    """Hydra's composition error when a job's overrides do not compose; ConfigError
    naming the first invalid job when any job's values are invalid."""
    jobs = sweep_jobs(config) or []
    loader = GlobalHydra.instance().config_loader()
    configs = [loader.load_sweep_config(config, overrides) for overrides in jobs]
    from mnist.config import validate_config  # imports torch: after Hydra's own checks

    invalid = []
    for number, (overrides, job_config) in enumerate(zip(jobs, configs, strict=True)):
        try:
            refuse_unresolvable(job_config)
            validate_config(job_config)
        except ConfigError as e:
            swept = [o for o in overrides if any(o not in job for job in jobs)] or overrides
            invalid.append(f"sweep job {number} ({' '.join(swept)}): {e}")
    if invalid:
        raise ConfigError(
            f"{invalid[0]} [{len(invalid)} of {len(jobs)} jobs invalid; none was started]"
        )
