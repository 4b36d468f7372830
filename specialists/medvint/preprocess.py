"""2D pictures to MedVInT-TD's input: 8-bit RGB, 512 x 512 bicubic resize, ImageNet mean/std (the authors' test
transform: Resize((512, 512), BICUBIC) on the PIL image, ToTensor, Normalize; no crop, so the aspect ratio is not kept).

Only single 2D pictures: a volume is refused here, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def medvint_transform(image_size: int = 512) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> 3 x S x S float tensor, as the authors' eval transform."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def image_to_tensor(picture: np.ndarray | Image.Image, image_size: int = 512) -> torch.Tensor:
    """A 2D picture ((H, W) or (H, W, C) array, or a PIL image) -> (3, S, S). 8-bit pictures are kept as they are;
    other depths are stretched to 8 bits (PMC-CLIP's `to_rgb`, the same rule the other 2D tools use)."""
    from medagent.specialists.pmcclip.preprocess import to_rgb

    if isinstance(picture, Image.Image):
        image = picture.convert("RGB")
    else:
        pixels = np.asarray(picture)
        if pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"an array of shape {list(pixels.shape)} is a 3D volume; MedVInT-TD reads one 2D image "
                "(give a single slice, or ask RadFM, which reads volumes)"
            )
        image = to_rgb(pixels)
    return medvint_transform(image_size)(image)
