"""A study's search space (conf/hparams_search/<name>.yaml `params`), checked against the
composed config before any trial so that a typo fails in one line, not in trial 7."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist.config import validate_config
from mnist.errors import ConfigError
from mnist.values import is_int, is_number

RANGE_KEYS = {"type", "low", "high", "log", "step"}
KEYS = {"float": RANGE_KEYS, "int": RANGE_KEYS, "categorical": {"type", "choices"}}
_ABSENT = object()


def override_text(value: Any) -> str:
    """A config value as Hydra's override grammar reads it back (floats in full precision)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Param:
    """One searched key. Optuna stores a non-scalar choice (a list of widths) by its override
    text; `labels` maps what Optuna stores to the value."""

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> dict[Any, Any]:
        scalar = (str, int, float, bool)
        return {c if isinstance(c, scalar) else override_text(c): c for c in self.choices}

    def value(self, label: Any) -> Any:
        return self.labels[label] if self.kind == "categorical" else label

    def label(self, value: Any) -> Any:
        """What Optuna stores for a config value; _ABSENT when the space has no such value."""
        if self.kind != "categorical":
            return value if is_number(value) and self.low <= value <= self.high else _ABSENT
        texts = {override_text(v): label for label, v in self.labels.items()}
        return texts.get(override_text(value), _ABSENT)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return self.value(trial.suggest_categorical(self.path, list(self.labels)))
        if self.kind == "int":
            return trial.suggest_int(
                self.path, self.low, self.high, log=self.log, step=self.step or 1
            )
        return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        if self.kind == "categorical":
            return "categorical " + " | ".join(override_text(c) for c in self.choices)
        scale = " log" if self.log else ""
        step = f" step {self.step}" if self.step else ""
        return f"{self.kind} [{self.low}, {self.high}]{scale}{step}"


def _param_problems(path: str, spec: Any) -> Iterator[str]:
    where = f"hparams_search.params.{path}"
    kind = spec.get("type") if isinstance(spec, Mapping) else spec
    if kind not in tuple(KEYS):
        yield f"{where}: distribution type {kind!r} is not one of {', '.join(KEYS)}"
        return
    if unknown := set(spec) - KEYS[kind]:
        yield f"{where}: unknown keys {sorted(unknown)} (a {kind} takes {sorted(KEYS[kind])})"
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            yield f"{where}: choices must be a non-empty list"
        elif len({override_text(c) for c in choices}) < len(choices):
            yield f"{where}: choices {override_text(choices)} repeat a value"
        return
    low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
    check = is_int if kind == "int" else is_number
    if not (check(low) and check(high)):
        yield f"{where}: low={low!r} and high={high!r} must be {kind}s"
    elif low >= high:
        yield f"{where}: the range [{low}, {high}] is empty or inverted (low must be < high)"
    elif spec.get("log") and low <= 0:
        yield f"{where}: a log range needs low > 0 (got {low})"
    if step is not None and not (check(step) and step > 0):
        yield f"{where}: step={step!r} must be a {kind} > 0"
    if step is not None and spec.get("log"):
        yield f"{where}: log and step cannot be combined"


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf) of a mapping nested (`optimizer: {lr: ...}`) or keyed by dotted
    paths; a distribution (a mapping with a `type`) is a leaf."""
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and "type" not in value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ConfigError("Invalid search space: " + "; ".join(problems) + ".")


def parse_space(params: Any) -> list[Param]:
    params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
    if not isinstance(params, Mapping) or not params:
        raise ConfigError("hparams_search.params must map config keys to distributions")
    params = dict(_leaves(params))
    _refuse([p for path, spec in params.items() for p in _param_problems(path, spec)])
    return [
        Param(path, spec["type"], spec.get("low"), spec.get("high"), bool(spec.get("log")),
              spec.get("step"), tuple(spec.get("choices", ())))
        for path, spec in params.items()
    ]  # fmt: skip


def first_trials(space: list[Param], entries: Any) -> list[dict[str, Any]]:
    """`hparams_search.enqueue` as Optuna's parameters: trials run before the sampler's own;
    a key left out is sampled."""
    if OmegaConf.is_config(entries):
        entries = OmegaConf.to_container(entries, resolve=True)
    by_path = {p.path: p for p in space}
    trials, problems = [], []
    for i, entry in enumerate(entries or []):
        where = f"hparams_search.enqueue[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must map searched keys to values")
            continue
        trials.append({})
        for path, value in _leaves(entry):
            param = by_path.get(path)
            if param is None:
                problems.append(f"{where}: {path!r} is not a searched key ({', '.join(by_path)})")
            elif (label := param.label(value)) is _ABSENT:
                problems.append(
                    f"{where}: {path}={override_text(value)} is not in {param.describe()}"
                )
            else:
                trials[-1][path] = label
    _refuse(problems)
    return trials


def check_space(
    space: list[Param],
    cfg: DictConfig,
    groups: set[str],
    compose: Callable[[list[str]], DictConfig],
) -> None:
    """Every key exists in `cfg`, every group's choice is one of its options, and every
    choice and both ends of every range give a valid config."""
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
        for value in param.choices or (param.low, param.high):
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
