"""Where things live by default, and the `${repo_root:}` and `${unique_dir:}` resolvers the
configs use."""

import sys
from pathlib import Path

from omegaconf import OmegaConf

from mnist.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MLRUNS = REPO_ROOT / "mlruns"


def unique_dir(path: str) -> str:
    """`path`, or `path_1`, `path_2`, ...: the first this call creates (atomically), as jobs
    started in the same second would share Hydra's directory. Cached by OmegaConf, so later
    reads of the config (a sweep job's copy included) get the same directory."""
    candidate, taken = Path(path), 0
    while True:
        try:
            candidate.mkdir(parents=True)
            return str(candidate)
        except FileExistsError:
            taken += 1
            candidate = Path(f"{path}_{taken}")


if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
if not OmegaConf.has_resolver("unique_dir"):
    OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True)


def refuse_another_checkout() -> None:
    """ConfigError for a script of one checkout that imports the `mnist` package of another
    (an environment shared between clones): it would run the other's code and write there."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if script is None:
        return
    script = Path(script).resolve()
    checkout = script.parents[1]
    if script.parent.name != "scripts" or not (checkout / "conf").is_dir():
        return
    if checkout != REPO_ROOT:
        raise ConfigError(
            f"{script} is in the checkout {checkout}, but Python imports the mnist "
            f"package of {REPO_ROOT} (an environment shared between checkouts); run it with "
            f"its own environment (cd {checkout} && make setup, then uv run), or run "
            f"{REPO_ROOT / 'scripts' / script.name}"
        )
