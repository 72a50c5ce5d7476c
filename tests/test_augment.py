from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist.config import run_settings, validate_config
from mnist.context import JobContext
from mnist.data.augment import OPS, Affine, BatchAugment, Erase, Op
from mnist.errors import ConfigError
from mnist.job import run_training
from mnist.resume import resume_config
from mnist.tools.classic import classic_transform
from tests.helpers import compose_config


def digit_batch(n: int = 16) -> torch.Tensor:
    images = torch.zeros(n, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 1.0
    return images


def center_of_mass(images: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(28, dtype=torch.float32)
    mass = images.sum((1, 2, 3))
    rows = (images.sum((1, 3)) * coords).sum(1) / mass
    cols = (images.sum((1, 2)) * coords).sum(1) / mass
    return torch.stack([rows, cols], 1)


def augment(*ops: Op, seed: int = 0) -> BatchAugment:
    return BatchAugment(ops, torch.Generator().manual_seed(seed))


def test_keeps_shape_and_dtype():
    images = digit_batch()
    out = augment(Affine(10, 0.1, 0.5, 22), Erase(0.5))(images)
    assert out.shape == images.shape and out.dtype == images.dtype


@pytest.mark.parametrize("op", [Affine(), Affine(0, 0, 0.5, 28), Erase(0.0)])
def test_an_inactive_op_is_the_identity_and_draws_nothing(op):
    images, generator = digit_batch(), torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert not op.active and not BatchAugment([op]).active
    assert torch.equal(op(images, generator), images)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize(("op", "draws"), [(Affine(rotate_deg=5), 4), (Erase(0.1), 5)])
def test_an_active_op_draws_a_fixed_count_per_sample(op, draws):
    """affine's four draws per sample (angle, shift x, shift y, crop) are what runs made
    before ops existed drew: any other count would change their batches."""
    generator, reference = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    op(digit_batch(16), generator)
    torch.rand(draws * 16, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_reproducible_under_a_seed_and_different_across_seeds():
    images = digit_batch()

    def run(seed: int) -> torch.Tensor:
        return augment(Affine(10, 0.1, 0.1, 22), Erase(0.5), seed=seed)(images)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_parameters_are_independent_per_sample():
    out = augment(Affine(rotate_deg=15, translate=0.1))(digit_batch())
    assert len({tuple(x.flatten().tolist()) for x in out.round(decimals=4)}) == len(out)


def test_translation_moves_the_digit_within_its_bound():
    images = digit_batch(64)
    out = augment(Affine(translate=0.1))(images)
    shift = (center_of_mass(out) - center_of_mass(images)).abs()
    assert shift.max() <= 0.1 * 28 + 0.5
    assert shift.max() > 1.0


def test_crop_zooms_in_and_keeps_the_centre():
    images = digit_batch(4)
    out = augment(Affine(crop_prob=1.0, crop_size=22))(images)
    assert out.sum() > images.sum() * 1.3  # zoom 28/22 grows the stroke area by ~1.6x
    assert torch.allclose(center_of_mass(out), center_of_mass(images), atol=0.3)


def test_erase_blanks_one_rectangle_of_the_chosen_samples_only():
    images = torch.ones(256, 1, 28, 28)
    out = augment(Erase(0.5, area=(0.05, 0.2), aspect=(0.5, 2.0)))(images)
    erased = out[:, 0] == 0
    assert torch.equal(out[~erased[:, None]], images[~erased[:, None]])  # the rest untouched
    chosen = erased.flatten(1).any(1)
    assert 0.35 < chosen.float().mean() < 0.65
    for mask in erased[chosen]:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # one filled rectangle: its bounding box has no hole
        assert 0.05 * 784 * 0.7 <= mask.sum() <= 0.2 * 784 * 1.3  # its area, rounded


def test_ops_apply_in_the_configs_order():
    images = digit_batch()
    rotate, erase = Affine(rotate_deg=30), Erase(1.0, area=(0.1, 0.3))
    by_hand = torch.Generator().manual_seed(0)
    assert torch.equal(augment(rotate, erase)(images), erase(rotate(images, by_hand), by_hand))
    assert not torch.equal(augment(rotate, erase)(images), augment(erase, rotate)(images))
    both = compose_config(["augmentation=[erase,shift_rotate]"]).augmentation
    assert [op.key for op in BatchAugment.from_config(both, None).ops] == ["erase", "affine"]


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (["augmentation=none"], "none"),
        (["augmentation=crop_rotate"], "affine(rot15,crop22p0.1)"),
        (
            ["augmentation=shift_rotate", "augmentation.affine.rotate_deg=5"],
            "affine(rot5,shift0.1)",
        ),
        (["augmentation=shift_rotate", "augmentation.affine.rotate_deg=0"], "affine(shift0.1)"),
        (["augmentation=[shift_rotate,erase]"], "affine(rot10,shift0.1)+erase(0.5)"),
        (["augmentation=erase", "augmentation.erase.area=[0.1,0.2]"], "erase(0.5,area0.1-0.2)"),
        (
            ["augmentation=[shift_rotate,erase]", "augmentation.erase.prob=0"],
            "affine(rot10,shift0.1)",
        ),
    ],
)
def test_an_augmentation_is_named_by_its_ops_and_values(overrides, name):
    augmentation = run_settings(compose_config(overrides)).augmentation
    assert BatchAugment.from_config(augmentation, None).name == name


def test_a_run_is_named_and_logged_by_what_its_augmentation_applies(tiny_cfg, tmp_path):
    """`augmentation=shift_rotate` with another rotation is no shift_rotate run: the param
    that compare.py groups by and the sweep's run name say what it applied."""
    cfg = tiny_cfg("augmentation=shift_rotate", "augmentation.affine.rotate_deg=5")
    ctx = JobContext(
        output_dir=tmp_path / "run", overrides=["augmentation=shift_rotate", "seed=0"],
        choices={"augmentation": "shift_rotate"}, swept_keys=["augmentation", "seed"],
    )  # fmt: skip
    result = run_training(cfg, ctx)
    run = MlflowClient(cfg.logger.tracking_uri).get_run(result["run_id"])
    assert run.data.params["augmentation"] == "affine(rot5,shift0.1)"
    assert run.data.params["augmentation.affine.rotate_deg"] == "5"
    assert run.info.run_name == "affine(rot5,shift0.1) seed=0"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+augmentation.blur.sigma=1"],
            f"augmentation.blur is not an augmentation op (known: {', '.join(sorted(OPS))})",
        ),
        (["+augmentation.erase=0.5"], "augmentation.erase=0.5 must be a mapping of erase's"),
        (
            ["++augmentation.affine.rotate=5"],
            "augmentation.affine.rotate is not a parameter of "
            "affine (known: rotate_deg, translate, crop_prob, crop_size)",
        ),
        (
            ["++augmentation.affine.translate=1"],
            "augmentation.affine.translate=1 must be a number in [0, 1)",
        ),
        (
            ["++augmentation.affine.crop_size=2.5"],
            "augmentation.affine.crop_size=2.5 must be an integer in [1, 28]",
        ),
        (["augmentation=erase", "augmentation.erase.prob=nan"], "augmentation.erase.prob=nan"),
        (
            ["augmentation=erase", "augmentation.erase.area=[0.3,0.1]"],
            "augmentation.erase.area=[0.3, 0.1] must be [low, high] with 0 < low <= high <= 1",
        ),
        (["augmentation=erase", "augmentation.erase.aspect=[0,1]"], "augmentation.erase.aspect="),
        (["augmentation=[]"], "augmentation=[] selects no option: use augmentation=none"),
    ],
)
def test_a_bad_op_or_parameter_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=r"^Invalid config: ") as e:
        validate_config(compose_config(["device=cpu", *overrides]))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.fixture
def noise_op():
    """An op as the README's recipe writes one: a key, a parameter and `__call__`; known
    while the test runs."""

    @dataclass(frozen=True)
    class Noise(Op):
        key: ClassVar[str] = "noise"
        std: float = 0.0

        def __call__(self, images, generator):
            noise = torch.randn(images.shape, generator=generator, device=images.device)
            return (images + self.std * noise).clamp(0, 1)

    yield Noise
    del OPS["noise"]


def test_an_op_of_a_key_and_a_call_is_named_by_its_values_and_inactive_at_its_defaults(
    noise_op, invert_op
):
    assert noise_op(0.1).active and noise_op(0.1).name() == "noise(std0.1)"
    assert not noise_op().active
    assert BatchAugment([noise_op(), Erase(0.5)]).name == "erase(0.5)"
    assert invert_op().active and invert_op().name() == "invert"
    assert BatchAugment([noise_op(0.1), Erase(0.5)]).describe().startswith("erasing with p=0.5")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nan", "augmentation.noise with {'std': nan} must return finite images of the batch's"),
        ("abc", "augmentation.noise with {'std': 'abc'} fails on a batch of digits (TypeError: "),
    ],
)
def test_a_bad_value_of_an_op_without_rules_is_refused_in_one_line(noise_op, value, message):
    with pytest.raises(ConfigError, match=r"^Invalid config: ") as e:
        validate_config(compose_config(["device=cpu", f"+augmentation.noise.std={value}"]))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_classic_pipeline_mirrors_every_op_in_order():
    pytest.importorskip("torchvision")
    from torchvision import transforms

    steps = classic_transform(BatchAugment([Affine(10, 0.1), Erase(0.3, (0.1, 0.2))])).transforms
    assert [type(s) for s in steps] == [transforms.RandomAffine, transforms.ToTensor,
                                        transforms.RandomErasing, transforms.Normalize]  # fmt: skip
    assert (steps[2].p, steps[2].scale, steps[2].ratio, steps[2].value) == (
        0.3,
        (0.1, 0.2),
        (0.3, 3.3),
        0,
    )


def test_a_config_stored_before_ops_existed_still_resumes_as_its_affine_op(tmp_path):
    """last.pt and MLflow's config.yaml of earlier runs hold the flat form."""
    cfg = compose_config(["device=cpu", "augmentation=shift_rotate"])
    stored = OmegaConf.to_container(cfg, resolve=True)  # as runs store it
    stored["augmentation"] = {"name": "shift_rotate", "rotate_deg": 10.0, "translate": 0.1,
                              "crop_prob": 0.0, "crop_size": 28}  # fmt: skip
    resumed = resume_config({"config": stored}, tmp_path / "last.pt", cfg.device)
    assert resumed.augmentation == cfg.augmentation


def test_an_op_whose_defaults_change_the_images_is_refused_rather_than_left_out():
    @dataclass(frozen=True)
    class Brighten(Op):
        key: ClassVar[str] = "brighten"
        amount: float = 0.1

        def __call__(self, images, generator):
            return (images + self.amount).clamp(0, 1)

    try:
        with pytest.raises(ConfigError, match=r"^Invalid config: ") as e:
            validate_config(compose_config(["device=cpu", "+augmentation.brighten={}"]))
    finally:
        del OPS["brighten"]
    assert "augmentation.brighten with {} is inactive (its parameters at their defaults) but " in (
        str(e.value)
    )


def test_the_previews_title_of_several_ops_is_wrapped_inside_the_image(tmp_path):
    """Cut at the edges, the title would leave ink in the image's first and last columns."""
    from PIL import Image

    from mnist.reporting.plots import plot_augmented_inputs

    both = BatchAugment([Affine(10, 0.1), Erase(0.5)])
    title = f"augmentation={both.name}: {both.describe()}"
    path = plot_augmented_inputs(
        torch.rand(10, 28, 28), torch.rand(10, 8, 28, 28), tmp_path / "preview.png", title
    )
    pixels = np.asarray(Image.open(path).convert("L"))
    assert (pixels[:, [0, 1, -2, -1]] > 250).all()
