import torch

from mnist.data.augment import BatchAugment


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


def test_keeps_shape_and_dtype():
    images = digit_batch()
    out = BatchAugment(10, 0.1, 0.5, 22, torch.Generator().manual_seed(0))(images)
    assert out.shape == images.shape and out.dtype == images.dtype


def test_zero_magnitude_is_identity():
    images = digit_batch()
    augment = BatchAugment(0, 0, 0, 28, torch.Generator().manual_seed(0))
    assert not augment.active
    assert torch.equal(augment(images), images)


def test_reproducible_under_a_seed_and_different_across_seeds():
    images = digit_batch()

    def run(seed: int) -> torch.Tensor:
        return BatchAugment(10, 0.1, 0.1, 22, torch.Generator().manual_seed(seed))(images)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_parameters_are_independent_per_sample():
    out = BatchAugment(15, 0.1, 0, 28, torch.Generator().manual_seed(0))(digit_batch())
    assert len({tuple(x.flatten().tolist()) for x in out.round(decimals=4)}) == len(out)


def test_translation_moves_the_digit_within_its_bound():
    images = digit_batch(64)
    out = BatchAugment(0, 0.1, 0, 28, torch.Generator().manual_seed(0))(images)
    shift = (center_of_mass(out) - center_of_mass(images)).abs()
    assert shift.max() <= 0.1 * 28 + 0.5
    assert shift.max() > 1.0


def test_crop_zooms_in_and_keeps_the_centre():
    images = digit_batch(4)
    out = BatchAugment(0, 0, 1.0, 22, torch.Generator().manual_seed(0))(images)
    assert out.sum() > images.sum() * 1.3  # zoom 28/22 grows the stroke area by ~1.6x
    assert torch.allclose(center_of_mass(out), center_of_mass(images), atol=0.3)
