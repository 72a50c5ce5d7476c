"""Where things live by default: the repository, its outputs/ and its MLflow store. The
configs reach these through conf/paths/default.yaml and the `${repo_root:}` resolver
registered here; Python callers with no config (the Classifier API) use the constants."""

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
# The default MLflow store directory, as conf/paths/default.yaml sets paths.mlruns.
DEFAULT_MLRUNS = REPO_ROOT / "mlruns"

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
