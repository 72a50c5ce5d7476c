"""What a single config value must be, shared by each config group's checks."""

import math
from collections.abc import Iterator, Mapping
from typing import Any


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def boolean_problems(
    group: str, section: Mapping[str, Any], keys: tuple[str, ...]
) -> Iterator[str]:
    for key in keys:
        if not isinstance(section[key], bool):
            yield f"{group}.{key}={section[key]!r} must be true or false"
