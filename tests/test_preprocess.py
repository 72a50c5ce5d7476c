"""Preprocessing of images the tests draw: whatever the paper, ink, light, noise, size,
position, transparency or file format, the output is the same MNIST-like digit."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mnist.data.batches import MNIST_MEAN, MNIST_STD
from mnist.errors import ImageError
from mnist.inference.digits import model_input, to_mnist
from mnist.inference.images import MAX_PIXELS
from tests.helpers import synthetic_digits
from tests.helpers.images import bad_files, bomb_png, encoded, seven, to_uint8


def lit_noisy_paper(ink: np.ndarray, paper, pen, seed: int = 0) -> np.ndarray:
    """RGB uint8: `pen` ink on `paper`, lit from one side (0.6 to 1.0), with noise."""
    rng = np.random.default_rng(seed)
    light = np.linspace(0.6, 1.0, ink.shape[1])[None, :, None]
    rgb = (np.array(paper) * (1 - ink[..., None]) + np.array(pen) * ink[..., None]) * light
    return to_uint8(rgb + rng.normal(0, 0.04, rgb.shape))


def variants() -> dict:
    ink = seven()
    rgba_dark = np.dstack([np.zeros((*ink.shape, 3)), ink])
    rgba_white = np.dstack([np.ones((*ink.shape, 3)), ink])
    sixteen_bit = Image.fromarray((ink * 60_000).astype(np.uint16))
    assert sixteen_bit.mode.startswith("I;16")
    large = np.ones((900, 1200)) - 0.8 * seven(1200, 900, left=700, top=500, scale=0.5)
    return {
        "dark ink on white paper": Image.fromarray(to_uint8(1 - 0.9 * ink)),
        "blue pen on yellow paper, uneven light, noise": Image.fromarray(
            lit_noisy_paper(ink, (0.98, 0.92, 0.5), (0.1, 0.15, 0.55))
        ),
        "white chalk on a noisy blackboard": Image.fromarray(
            to_uint8(0.1 + 0.8 * ink + np.random.default_rng(1).normal(0, 0.05, ink.shape))
        ),
        "transparent PNG, dark ink": encoded(Image.fromarray(to_uint8(rgba_dark)), "PNG"),
        "transparent PNG, white ink": encoded(Image.fromarray(to_uint8(rgba_white)), "PNG"),
        "palette GIF": encoded(Image.fromarray(to_uint8(1 - ink)).convert("P"), "GIF"),
        "16-bit PNG": encoded(sixteen_bit, "PNG"),
        "JPEG": encoded(Image.fromarray(to_uint8(1 - ink)), "JPEG", quality=60),
        "WebP": encoded(Image.fromarray(to_uint8(1 - ink)), "WEBP"),
        "BMP": encoded(Image.fromarray(to_uint8(1 - ink)), "BMP"),
        "TIFF": encoded(Image.fromarray(to_uint8(1 - ink)), "TIFF"),
        "small digit in a large photo": Image.fromarray(to_uint8(large)),
        "float numpy array": 1 - ink,
        "channels-first float tensor": torch.from_numpy(np.stack([1 - ink] * 3)).float(),
    }


def centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(digit.shape)
    mass = digit.astype(np.float64).sum()
    return (rows * digit).sum() / mass, (cols * digit).sum() / mass


def assert_mnist_like(digit: np.ndarray) -> None:
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    rows, cols = np.nonzero(digit)
    assert np.ptp(rows) + 1 <= 20 and np.ptp(cols) + 1 <= 20, "digit exceeds the 20 px box"
    assert max(np.ptp(rows), np.ptp(cols)) + 1 >= 18, "digit not scaled up to the box"
    assert digit.max() >= 200, "strokes are white"
    assert (digit == 0).mean() > 0.6, "background is exactly black"
    cy, cx = centre_of_mass(digit)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return to_mnist(to_uint8(seven()))


def test_a_clean_white_digit_is_made_mnist_like(reference):
    assert_mnist_like(reference)


@pytest.mark.parametrize("name", list(variants()))
def test_every_rendering_gives_the_same_mnist_digit(name, reference):
    digit = to_mnist(variants()[name])
    assert_mnist_like(digit)
    similarity = np.corrcoef(digit.ravel().astype(float), reference.ravel().astype(float))[0, 1]
    assert similarity > 0.9, f"{name}: correlation {similarity:.3f} with the clean digit"


def test_exif_orientation_is_applied():
    # A horizontal bar, stored sideways with the tag that says "rotate to display".
    bar = np.zeros((60, 200))
    bar[25:35, 20:180] = 1
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(to_uint8(bar)).transpose(Image.Transpose.ROTATE_90)
    digit = to_mnist(encoded(stored, "JPEG", exif=exif))
    rows, cols = np.nonzero(digit > 64)
    assert np.ptp(cols) > 3 * np.ptp(rows), "the bar should be horizontal, as displayed"


def test_synthetic_idx_digit_keeps_its_stroke_and_loses_its_noise():
    images, _ = synthetic_digits(10, seed=0)
    digit = to_mnist(images[0])
    assert_mnist_like(digit)
    # The noise (values up to 60 everywhere) is gone: one solid block remains.
    rows, cols = np.nonzero(digit)
    block = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert (block > 0).mean() > 0.9
    assert np.ptp(rows) + 1 == 20  # the 8x4 block, scaled to the 20 px box


def test_model_input_normalises_exactly_like_training(reference):
    tensor = model_input(to_mnist(to_uint8(seven()))[None])[0]
    assert tensor.shape == (1, 28, 28) and tensor.dtype == torch.float32
    expected = (torch.from_numpy(reference).float() / 255 - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(tensor[0], expected)


def test_each_bad_input_raises_one_clear_error(tmp_path):
    for problem, path in bad_files(tmp_path).items():
        with pytest.raises(ImageError) as caught:
            to_mnist(path)
        message = str(caught.value)
        assert message.startswith(str(path)) and problem in message, message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("side", "size"),
    [
        (8000, "8000x8000 = 64,000,000 pixels"),
        (15000, f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels"),
    ],
)
def test_an_image_over_the_pixel_limit_is_refused_as_too_large(side, size):
    """A 64-MP canvas was reported as truncated or corrupt: the size refusal, a ValueError,
    was caught as a decoding failure. PIL refuses past 179 MP itself, before the size is
    known, and warns (which stopped the image) past 89 MP."""
    with pytest.raises(ImageError) as refused:
        to_mnist(io.BytesIO(bomb_png(side)))
    assert str(refused.value) == (
        f"<BytesIO>: too large ({size}), over the limit of {MAX_PIXELS:,} pixels (refused as a "
        "possible decompression bomb); shrink the image first"
    )


def test_arrays_that_are_not_images_are_refused():
    with pytest.raises(ImageError, match="shape"):
        to_mnist(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ImageError, match="cannot read a dict"):
        to_mnist({"not": "an image"})
