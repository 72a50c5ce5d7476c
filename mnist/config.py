"""Validation of a composed training config before anything is downloaded, built or logged
(each group's checks live beside what it configures), and the core's settings read from it."""

from collections.abc import Iterator
from functools import cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist.data.augment import augmentation_problems, stored_form
from mnist.data.tensors import data_problems
from mnist.errors import ConfigError
from mnist.extras import missing
from mnist.models import built_on_meta
from mnist.paths import REPO_ROOT
from mnist.training.build import RunSettings
from mnist.training.device import available, determinism_problem, device_problems, resolve_device
from mnist.training.optim import optimizer_problems, scheduler_problems
from mnist.training.settings import trainer_problems
from mnist.values import boolean_problems, is_int

CORE_GROUPS = ("device", "data", "trainer", "model", "optimizer", "scheduler", "augmentation")


def _problems(cfg: DictConfig) -> Iterator[str]:
    # The validation split seeds a torch.Generator with the seed itself (below 2**64).
    if not is_int(cfg.seed) or not 0 <= cfg.seed < 2**64:
        yield f"seed={cfg.seed!r} must be an integer in [0, 2**64)"
    yield from _unknown_key_problems(cfg)
    plain = _plain(cfg)
    trainer, optimizer, device = plain["trainer"], plain["optimizer"], plain["device"]
    yield from trainer_problems(trainer)
    yield from data_problems(plain["data"])
    if "augmentation" in plain:
        yield from augmentation_problems(plain["augmentation"])
    else:  # Hydra drops the group for an empty selection
        yield "augmentation=[] selects no option: use augmentation=none for no augmentation"
    yield from optimizer_problems(optimizer)
    try:
        model = built_on_meta(plain["model"], channels_last=trainer["channels_last"] is True)
    except ConfigError as e:
        model = None
        yield str(e)
    yield from scheduler_problems(plain["scheduler"], optimizer["lr"], trainer["epochs"])
    yield from _logger_problems(cfg.logger)
    yield from device_problems(device, trainer["precision"])
    name = device["name"]
    checked = model is not None and trainer["deterministic"] is True  # None: reported above
    if checked and (name == "auto" or available(name)):
        yield from filter(None, [determinism_problem(model, resolve_device(name))])
    resume = OmegaConf.select(cfg, "sweep.resume", default=False)
    if not isinstance(resume, bool):
        yield f"sweep.resume={resume!r} must be true or false"


def _plain(cfg: DictConfig) -> dict[str, Any]:
    """The core's groups of `cfg`, resolved (Hydra leaves out an empty augmentation)."""
    return {
        group: OmegaConf.to_container(cfg[group], resolve=True)
        for group in CORE_GROUPS
        if group in cfg
    }


def run_settings(cfg: DictConfig) -> RunSettings:
    """The core's inputs, from a validated config."""
    return RunSettings.from_mapping({"seed": cfg.seed, **_plain(cfg)})


# Config sections and the conf/ group that fills each: a key none of the group's options has
# (added with `+`) would be ignored silently, so it is refused as a typo. The keys of model,
# optimizer and augmentation are their builders' arguments, which those check.
_SECTION_GROUPS = {"trainer": "trainer", "data": "dataset", "scheduler": "scheduler"}


def _keys(section: DictConfig) -> set[str]:
    """Dotted keys (`early_stopping.patience`), unresolved."""
    return set(flatten(OmegaConf.to_container(section)))


@cache
def _option_keys(group: str) -> dict[str, frozenset[str]]:
    return {
        path.stem: frozenset(_keys(OmegaConf.load(path)))
        for path in (REPO_ROOT / "conf" / group).glob("*.yaml")
    }


def _unknown_key_problems(cfg: DictConfig) -> Iterator[str]:
    """A section's known keys: those of the option its `name` names, else of any option."""
    for section, group in _SECTION_GROUPS.items():
        options = _option_keys(group)
        name = cfg[section].get("name")
        known = options.get(name) if isinstance(name, str) else None
        known = known or frozenset().union(*options.values())
        for key in sorted(_keys(cfg[section]) - known):
            yield f"{section}.{key} is not a key of {section} (known: {', '.join(sorted(known))})"


def _logger_problems(logger: DictConfig) -> Iterator[str]:
    if not (isinstance(logger.experiment, str) and logger.experiment.strip()):
        yield f"logger.experiment={logger.experiment!r} must be a non-empty name"
    yield from boolean_problems("logger", logger, ("log_model", "system_metrics"))
    if logger.system_metrics is True:
        yield from filter(None, [missing("psutil", "monitoring", "logger.system_metrics=true")])
    if logger.register is not None and not (isinstance(logger.register, str) and logger.register):
        yield f"logger.register={logger.register!r} must be a model name, or null"


# Config keys added after runs were stored, each with the value that trains as runs did
# before it: a stored config that lacks one gets it (as_now), and a run at that value keeps
# the params and config.sha256 it had before (mnist/tracking/params.py).
ADDED_KEYS: dict[str, Any] = {"trainer.ema_decay": None}
_ABSENT = object()


def as_now(stored: DictConfig) -> DictConfig:
    """A stored config in today's form: augmentation as ops, the keys added since."""
    stored.augmentation = stored_form(stored.augmentation)
    for key, value in ADDED_KEYS.items():
        if OmegaConf.select(stored, key, default=_ABSENT) is _ABSENT:
            OmegaConf.update(stored, key, value, force_add=True)
    return stored


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value, in one line."""
    problems = list(_problems(cfg))
    if problems:
        raise ConfigError("Invalid config: " + "; ".join(problems) + ".")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"epochs": 3}} -> {"trainer.epochs": 3}: the form of MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
