"""2D pictures in: any array (8/16-bit, float, grey, RGB, RGBA) as an 8-bit RGB image, then PMC-CLIP's transform.

The transform is open_clip's eval `image_transform`: bicubic resize of the short side to 224, centre crop,
RGB, normalised with the OpenAI CLIP mean/std (MODELS.md section 4).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

# open_clip.constants.OPENAI_DATASET_MEAN / _STD, written out so that reading an image does not import open_clip;
# a test checks they are equal.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(pixels: np.ndarray) -> Image.Image:
    """An (H, W) or (H, W, C) array as 8-bit RGB. uint8 is kept as it is; other depths (16-bit radiographs,
    rescaled DICOM values) are stretched from their 0.5th to 99.5th percentile; alpha is dropped."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise ValueError(f"expected a 2D grey or RGB(A) picture, got an array of shape {list(pixels.shape)}")
    if pixels.ndim == 3:
        pixels = pixels[:, :, :3]
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float32)
        finite = values[np.isfinite(values)]
        low, high = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 0.0))
        scaled = (np.clip(values, low, high) - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        pixels = np.nan_to_num(scaled).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.convert("RGB") if image.mode != "RGB" else image


def pmcclip_transform(image_size: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's own eval transform with OpenAI CLIP's statistics: PIL image -> 3xSxS float tensor."""
    from open_clip.transform import image_transform

    return image_transform(image_size, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
