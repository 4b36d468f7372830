"""KEP's evaluation transform is open_clip's own, with the variant's statistics (pixels against the authors' code:
test_parity.py)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from medagent.specialists.pathology import preprocess
from medagent.specialists.pathology.preprocess import IMAGENET_MEAN, IMAGENET_STD, kep_transform


def test_statistics_are_open_clips() -> None:
    from open_clip import constants

    assert (preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD) == (constants.IMAGENET_MEAN, constants.IMAGENET_STD)
    assert (preprocess.OPENAI_CLIP_MEAN, preprocess.OPENAI_CLIP_STD) == (
        constants.OPENAI_DATASET_MEAN,
        constants.OPENAI_DATASET_STD,
    )


@pytest.mark.parametrize(("width", "height", "target"), [(640, 480, 224), (300, 901, 224), (33, 97, 32)])
def test_short_side_is_resized_then_centre_cropped(width: int, height: int, target: int) -> None:
    # Left half black, right half white: after a centre crop the split stays in the middle column band.
    image = Image.new("RGB", (width, height), (0, 0, 0))
    image.paste((255, 255, 255), (width // 2, 0, width, height))
    pixels = kep_transform(target)(image)
    assert pixels.shape == (3, target, target) and pixels.dtype == torch.float32
    row = pixels[0, target // 2]  # black then white, the split in the middle (wide: centre crop; tall: full width)
    assert row[0] < 0 < row[-1] and abs(int((row > 0).float().argmax()) - target // 2) <= 1


def test_transform_normalises_a_flat_colour_to_imagenet_z_scores() -> None:
    grey = Image.new("RGB", (50, 80), (128, 128, 128))
    pixels = kep_transform(32)(grey)
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert pixels.shape == (3, 32, 32)
    assert pixels.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=1e-6)
