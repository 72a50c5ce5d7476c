"""Where things live by default: the repository, its outputs/ and its MLflow store. The
configs reach these through conf/paths/default.yaml and the `${repo_root:}` resolver
registered here; Python callers with no config (the Classifier API) use the constants.
Every entry config names its Hydra output directory through `${unique_dir:}`, also here."""

import sys
from pathlib import Path

from omegaconf import OmegaConf

from mnist.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The default MLflow store directory, as conf/paths/default.yaml sets paths.mlruns.
DEFAULT_MLRUNS = REPO_ROOT / "mlruns"


def unique_dir(path: str) -> str:
    """`path`, or `path_1`, `path_2`, ...: the first this call creates. Hydra names a job's
    directory after the second it started, so jobs started in the same second would share
    one, and each would write, lock or clean up the other's files; mkdir is atomic, so each
    gets one of its own. Registered with OmegaConf's cache: every later read of the same
    config (and of each sweep job's config, which Hydra gives a copy of the sweep's cache)
    gets the directory this call created."""
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
    """Stop, before anything is written, a script of one checkout that imports the `mnist`
    package of another (an environment shared between clones, with an editable install of
    the first): it would run the other clone's code and write into its outputs/ and
    store. ConfigError naming both (mnist/cli.py: one line, exit 2)."""
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
