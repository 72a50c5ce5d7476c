"""A study's search space: the `params` of conf/hparams_search/<name>.yaml, each a config key
(`optimizer.lr`) or a config group (`optimizer`) with a distribution. Checked against the
composed config before any trial, so that a typo fails in one line instead of in trial 7;
each trial turns its suggestions into Hydra overrides of the training config."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mnist.config import validate_config
from mnist.errors import ConfigError

TYPES = ("float", "int", "categorical")
KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
_ABSENT = object()


def override_text(value: Any) -> str:
    """A config value as Hydra's override grammar reads it back: floats in full precision
    (repr), lists as [a,b], true/false/null."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One searched key. A categorical choice that is not a scalar (a list of stage widths)
    is known to Optuna by its override text, and maps back to the value here."""

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> list[Any]:
        return [
            c if isinstance(c, (str, int, float, bool)) else override_text(c) for c in self.choices
        ]

    def value(self, label: Any) -> Any:
        """The config value of what Optuna suggested or stored."""
        if self.kind != "categorical":
            return label
        return self.choices[self.labels.index(label)]

    def label(self, value: Any) -> Any:
        """What Optuna stores for a config value (the inverse of `value`)."""
        if self.kind != "categorical":
            return value
        return self.labels[[override_text(c) for c in self.choices].index(override_text(value))]

    def admits(self, value: Any) -> bool:
        if self.kind == "categorical":
            return override_text(value) in {override_text(c) for c in self.choices}
        return _is_number(value) and self.low <= value <= self.high

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.path, self.low, self.high, log=self.log, step=self.step or 1
            )
        return self.value(trial.suggest_categorical(self.path, self.labels))

    def corners(self) -> list[Any]:
        """The values checked before any trial: a range's ends, every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "categorical":
            return "categorical " + " | ".join(override_text(c) for c in self.choices)
        scale = " log" if self.log else ""
        step = f" step {self.step}" if self.step else ""
        return f"{self.kind} [{self.low}, {self.high}]{scale}{step}"


def _param_problems(path: str, spec: Any) -> Iterator[str]:
    where = f"hparams_search.params.{path}"
    if not isinstance(spec, Mapping) or spec.get("type") not in TYPES:
        kind = spec.get("type") if isinstance(spec, Mapping) else spec
        yield f"{where}: distribution type {kind!r} is not one of {', '.join(TYPES)}"
        return
    unknown = set(spec) - KEYS[spec["type"]]
    if unknown:
        known = sorted(KEYS[spec["type"]])
        yield f"{where}: unknown keys {sorted(unknown)} (a {spec['type']} takes {known})"
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            yield f"{where}: choices must be a non-empty list"
        elif len({override_text(c) for c in choices}) < len(choices):
            yield f"{where}: choices {override_text(choices)} repeat a value"
        return
    low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
    number = (
        (lambda v: isinstance(v, int) and not isinstance(v, bool))
        if spec["type"] == "int"
        else _is_number
    )
    if not (number(low) and number(high)):
        yield f"{where}: low={low!r} and high={high!r} must be {spec['type']}s"
    elif low >= high:
        yield f"{where}: the range [{low}, {high}] is empty or inverted (low must be < high)"
    elif spec.get("log") and low <= 0:
        yield f"{where}: a log range needs low > 0 (got {low})"
    if step is not None and not (number(step) and step > 0):
        yield f"{where}: step={step!r} must be a {spec['type']} > 0"
    if step is not None and spec.get("log"):
        yield f"{where}: log and step cannot be combined"


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(config path, leaf) of a mapping nested as the config is (`optimizer: {lr: ...}`,
    so that `hparams_search.params.optimizer.lr.low=1e-4` is an override) or keyed by
    dotted paths (`optimizer.lr: ...`). A distribution (a mapping with a `type`) is a leaf."""
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and "type" not in value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def parse_space(params: Any) -> list[Param]:
    """The `params` mapping as Params; ConfigError listing every malformed entry."""
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    if not isinstance(params, Mapping) or not params:
        raise ConfigError("hparams_search.params must map config keys to distributions")
    params = dict(_leaves(params))
    problems = [p for path, spec in params.items() for p in _param_problems(path, spec)]
    if problems:
        raise ConfigError("Invalid search space: " + "; ".join(problems) + ".")
    return [
        Param(
            path=path,
            kind=spec["type"],
            low=spec.get("low"),
            high=spec.get("high"),
            log=bool(spec.get("log", False)),
            step=spec.get("step"),
            choices=tuple(spec.get("choices", ())),
        )
        for path, spec in params.items()
    ]


def first_trials(space: list[Param], entries: Any) -> list[dict[str, Any]]:
    """`hparams_search.enqueue`: trials to run before the sampler's own (e.g. the recipe
    you already have), each a mapping of some searched keys to values in their ranges, as
    Optuna's parameters; a key left out is sampled."""
    if isinstance(entries, (DictConfig, ListConfig)):
        entries = OmegaConf.to_container(entries, resolve=True)
    by_path = {p.path: p for p in space}
    trials, problems = [], []
    for i, entry in enumerate(entries or []):
        where = f"hparams_search.enqueue[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must map searched keys to values")
            continue
        params = dict(_leaves(entry))
        for path, value in params.items():
            param = by_path.get(path)
            if param is None:
                problems.append(f"{where}: {path!r} is not a searched key ({', '.join(by_path)})")
            elif not param.admits(value):
                problems.append(
                    f"{where}: {path}={override_text(value)} is not in {param.describe()}"
                )
        trials.append(
            {path: by_path[path].label(value) for path, value in params.items() if path in by_path}
        )
    if problems:
        raise ConfigError("Invalid search space: " + "; ".join(problems) + ".")
    return trials


def space_signature(space: list[Param]) -> str:
    """What a study is searching, as stored with it: resuming must search the same space."""
    return json.dumps({p.path: p.describe() for p in space}, sort_keys=True)


def check_space(
    space: list[Param],
    cfg: DictConfig,
    groups: set[str],
    compose: Callable[[list[str]], DictConfig],
) -> None:
    """Every key exists in `cfg` (the training config the search starts from), every
    choice of a config group is one of its options, and the ends of every range and every
    choice give a valid config. `compose` builds the training config with overrides."""
    for param in space:
        where = f"hparams_search.params.{param.path}"
        if param.path in groups:
            if param.kind != "categorical":
                raise ConfigError(f"{where}: a config group takes a categorical of its options")
            for choice in param.choices:
                try:
                    candidate = compose([f"{param.path}={choice}"])
                except ConfigError as e:
                    raise ConfigError(
                        f"{where}: {choice!r} is not an option of config group {param.path!r} ({e})"
                    ) from e
                _check_valid(candidate, f"{param.path}={choice}")
            continue
        current = OmegaConf.select(cfg, param.path, default=_ABSENT)
        if current is _ABSENT or isinstance(current, DictConfig):
            raise ConfigError(
                f"{where}: {param.path!r} is not a key of the training config "
                f"(nor a config group: {', '.join(sorted(groups))})"
            )
        for value in param.corners():
            candidate = copy.deepcopy(cfg)
            OmegaConf.update(candidate, param.path, value, merge=False)
            _check_valid(candidate, f"{param.path}={override_text(value)}")


def _check_valid(cfg: DictConfig, override: str) -> None:
    try:
        validate_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"search space value {override} gives an invalid config: {e}") from e


def trial_overrides(space: list[Param], trial: Any) -> list[str]:
    """The trial's suggestions as overrides, config groups first."""
    ordered = sorted(space, key=lambda p: "." in p.path)
    return [f"{p.path}={override_text(p.suggest(trial))}" for p in ordered]
