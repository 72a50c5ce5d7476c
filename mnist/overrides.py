"""Hydra command-line overrides as the project reads them: `key=value`, `+key=value`
(add), `++key=value` (force) and `~key` (delete) all name the same key."""


def split_override(override: str) -> tuple[str, str]:
    """(key or config group, value) of an override; the value is "" for `~key`."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def override_key(override: str) -> str:
    """The key or config group an override sets, e.g. "optimizer.lr" for "+optimizer.lr=1"."""
    return split_override(override)[0]
