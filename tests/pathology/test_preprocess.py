"""KEP's evaluation transform without torchvision gives torchvision's numbers (checked while it is installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medagent.specialists.pathology.preprocess import IMAGENET_MEAN, IMAGENET_STD, kep_transform


@pytest.mark.parametrize(
    ("width", "height", "target"),
    [(224, 224, 224), (640, 480, 224), (300, 901, 224), (100, 150, 224), (517, 333, 64), (64, 64, 32), (33, 97, 32)],
)
def test_transform_matches_torchvision(width: int, height: int, target: int) -> None:
    transforms = pytest.importorskip("torchvision.transforms", reason="torchvision not installed: nothing to compare")
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    reference = transforms.Compose(
        [
            transforms.Resize(target, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(target),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(image)
    ours = kep_transform(target)(image)
    assert ours.shape == reference.shape == (3, target, target) and ours.dtype == torch.float32
    assert torch.equal(ours, reference), float((ours - reference).abs().max())


def test_transform_normalises_a_flat_colour_to_imagenet_z_scores() -> None:
    grey = Image.new("RGB", (50, 80), (128, 128, 128))
    pixels = kep_transform(32)(grey)
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert pixels.shape == (3, 32, 32)
    assert pixels.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=1e-6)
