"""`recipe=cpu/<model>` for every model: conf/recipe/cpu/<model>.yaml, else the shared recipe
added to Hydra's ConfigStore here (an interpolated defaults entry may not override a group).
The `${cpu_recipes:}` resolver lists them for experiment=arch_table_cpu."""

from functools import cache
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from mnist.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"


def model_names(conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of the `model` group: conf/model/*.yaml."""
    return sorted(path.stem for path in (conf_dir / "model").glob("*.yaml"))


def _recipe_file(conf_dir: Path, model: str) -> Path:
    return conf_dir / "recipe" / "cpu" / f"{model}.yaml"


def register_default_recipes(conf_dir: Path = CONF_DIR) -> None:
    for model in model_names(conf_dir):
        if not _recipe_file(conf_dir, model).exists():
            ConfigStore.instance().store(
                group="recipe/cpu",
                name=model,
                package="_global_",
                node={"defaults": ["/recipe/cpu/_shared", {"override /model": model}]},
            )


@cache
def cpu_recipes(conf_dir: Path = CONF_DIR) -> str:
    """`cpu/<model>` for every model, longest job first (epochs x MACs per image), so that
    joblib's workers finish together instead of one running a long job alone."""
    from mnist.models import build_model, summarize

    shared = OmegaConf.load(conf_dir / "recipe" / "cpu" / "_shared.yaml").trainer.epochs

    def cost(model: str) -> int:
        file = _recipe_file(conf_dir, model)
        epochs = OmegaConf.select(OmegaConf.load(file), "trainer.epochs") if file.exists() else None
        model_cfg = OmegaConf.to_container(OmegaConf.load(conf_dir / "model" / f"{model}.yaml"))
        macs = summarize(build_model(model_cfg)).macs
        return (epochs or shared) * macs

    models = sorted(model_names(conf_dir), key=cost, reverse=True)
    return ",".join(f"cpu/{model}" for model in models)


register_default_recipes()
if not OmegaConf.has_resolver("cpu_recipes"):
    OmegaConf.register_new_resolver("cpu_recipes", cpu_recipes)
