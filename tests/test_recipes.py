"""The README's two recipes, followed as a new user would in a copy of the repository: a
model (its module and its YAML) and an augmentation op (its class and its YAML), swept
2 x 2 on tiny data, compared and promoted with no arguments. Four files, nothing else: the
tests that go over every model and op pass with them too."""

import csv
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import REPO_ROOT, tiny_overrides

LENET = '''
"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling; its first linear layer sizes
itself on the first batch."""

from torch import Tensor, nn


class LeNet5(nn.Module):
    def __init__(self, channels: tuple[int, int] = (6, 16), hidden: int = 120) -> None:
        super().__init__()
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, first, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
'''

NOISE = '''


@dataclass(frozen=True)
class Noise(Op):
    """Gaussian pixel noise of standard deviation `std`, clipped to [0, 1]."""

    key: ClassVar[str] = "noise"
    std: float = 0.0

    def __call__(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        return (images + self.std * noise.to(images.dtype)).clamp(0, 1)
'''


def copy_of_the_repository(destination):
    """Its files under version control, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def run(repo, script, *args):
    # The copy's package, not the environment's editable install of this checkout.
    env = {**os.environ, "PYTHONPATH": str(repo)}
    ran = subprocess.run(
        [sys.executable, str(repo / "scripts" / f"{script}.py"), *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    return ran


@pytest.mark.slow  # four training jobs, compare and promote as scripts: minutes on 2 cores
def test_the_readme_recipes_add_a_model_and_an_augmentation_in_four_files(synthetic_root, tmp_path):
    repo = copy_of_the_repository(tmp_path / "repo")
    (repo / "mnist" / "models" / "lenet.py").write_text(LENET.lstrip())
    (repo / "conf" / "model" / "lenet5.yaml").write_text("_target_: mnist.models.lenet.LeNet5\n")
    with open(repo / "mnist" / "data" / "augment.py", "a") as module:
        module.write(textwrap.dedent(NOISE))
    (repo / "conf" / "augmentation" / "noise.yaml").write_text("noise: {std: 0.1}\n")
    # The tests that go over every model and every op take the new ones in, unchanged: their
    # cases of the new model and op, and the tests over all models or ops at once (of the
    # experiment presets, the two that sweep every model); the other cases test nothing the
    # new files change, and the suite runs them already.
    env = {**os.environ, "PYTHONPATH": str(repo)}
    tests = [
        f"tests/test_{name}.py"
        for name in ("models", "config", "augment", "accelerators", "summary", "docs")
    ]
    chosen = (
        "lenet5 or noise or blur or (experiment_preset and arch_table) or cpu_table "
        "or without_a_recipe or reference_accuracy or every_op_in_order or every_module"
    )
    checked = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "not slow",
         "-k", chosen, *tests],
        cwd=repo, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert "[lenet5." in checked.stdout  # it was among the models tested
    assert "[augmentation=noise]" in checked.stdout  # and its YAML among the options
    tiny = [o for o in tiny_overrides(synthetic_root, tmp_path) if not o.startswith("paths.")]
    run(repo, "train", "-m", "model=lenet5,cnn24k", "augmentation=none,noise", "seed=0",
        *tiny, "trainer.epochs=1", "logger.log_model=true")  # fmt: skip
    run(repo, "compare")
    (table,) = (repo / "outputs" / "compare").rglob("table.csv")
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert sorted((row["model"], row["augmentation"]) for row in rows) == [
        ("cnn24k", "noise(std0.1)"), ("cnn24k", "none"),
        ("lenet5", "noise(std0.1)"), ("lenet5", "none"),
    ]  # fmt: skip
    val = [float(row["best_val_acc_mean"]) for row in rows]
    assert val == sorted(val, reverse=True)
    (markdown,) = table.parent.glob("table.md")
    first_row = next(line for line in markdown.read_text().splitlines() if "★" in line)
    assert first_row.startswith(f"| {rows[0]['model']} ★ | {rows[0]['augmentation']} |")

    run(repo, "promote")
    store = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)  # not a registry an earlier test set
    experiment = client.get_experiment_by_name("mnist")
    jobs = [r for r in client.search_runs([experiment.experiment_id]) if "model" in r.data.tags]
    assert len(jobs) == 4
    best_val = max(r.data.metrics["best/val_acc"] for r in jobs)
    champion = client.get_model_version_by_alias("mnist", "champion")
    assert client.get_run(champion.run_id).data.metrics["best/val_acc"] == best_val
