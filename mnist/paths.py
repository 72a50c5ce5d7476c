"""Where things live by default: the repository, its outputs/ and its MLflow store. The
configs reach these through conf/paths/default.yaml and the `${repo_root:}` resolver
registered here; Python callers with no config (the Classifier API) use the constants."""

import sys
from pathlib import Path

from omegaconf import OmegaConf

from mnist.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The default MLflow store directory, as conf/paths/default.yaml sets paths.mlruns.
DEFAULT_MLRUNS = REPO_ROOT / "mlruns"

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


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
