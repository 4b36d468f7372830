"""Scans and prompts to RadFM's input layout.

Images become (3, S, S, D) float tensors in [0, 1] (S = the model's image size, 512 for the published model; D a
multiple of 4; no mean/std). A 2D picture gets D = 4. A volume is reoriented so its slices look like a display
(rows anterior->posterior, columns patient right->left, slices inferior->superior, as RadFM's JPG-built training
volumes were), raw CT is windowed first, then it is resized (trilinear, deterministic) and min-max scaled.
Prompts put each image as `<image>` + its visual tokens + `</image>` before the text.
"""

from __future__ import annotations

import numpy as np
import torch

# Soft-tissue window (centre 40, width 400) for raw Hounsfield data; RadFM's training volumes were display-windowed.
SOFT_TISSUE_HU = (-160.0, 240.0)
MAX_DEPTH = 64  # training volumes were capped at 64 slices
DISPLAY_AXES = ("P", "L", "S")


def _unit_range(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """MONAI returns MetaTensors; the model wants plain tensors."""
    return tensor.as_subclass(torch.Tensor)


def image_to_tensor(pixels: np.ndarray, size: int = 512) -> torch.Tensor:
    """A 2D picture (H, W) or (H, W, C) -> (3, size, size, 4): bicubic resize, 8-bit scaled by 255 (as ToTensor)."""
    from monai.transforms import Resize

    if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) < 2:
        raise ValueError(f"expected a 2D picture (H, W) or (H, W, C), got shape {pixels.shape}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 4:  # RGBA: drop alpha
        pixels = pixels[..., :3]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {pixels.shape[2]}")
    scaled = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else _unit_range(pixels)
    channels_first = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))
    resized = Resize((size, size), mode="bicubic", anti_aliasing=True)(channels_first)
    resized = _plain(resized).clamp(0.0, 1.0)
    return resized[..., None].repeat(1, 1, 1, 4).contiguous()


def snap_depth(slices: int, max_depth: int = MAX_DEPTH) -> int:
    """Nearest multiple of 4 in [4, max_depth] (RadFM's collator rule)."""
    return int(min(max(4, int(slices / 4 + 0.5) * 4), max_depth))  # halves round up, not to even


def to_display_orientation(voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient (i, j, k) voxels with a RAS affine so axes run P, L, S (display rows, columns, slices)."""
    import nibabel.orientations as nio

    current = nio.io_orientation(affine)
    transform = nio.ornt_transform(current, nio.axcodes2ornt(DISPLAY_AXES))
    return nio.apply_orientation(voxels, transform)


def volume_to_tensor(
    voxels: np.ndarray,
    size: int = 512,
    affine: np.ndarray | None = None,
    hounsfield: bool = False,
    window: tuple[float, float] = SOFT_TISSUE_HU,
    max_depth: int = MAX_DEPTH,
) -> torch.Tensor:
    """A 3D scan (i, j, k) -> (3, size, size, D), D = slices snapped to a multiple of 4 and capped at max_depth."""
    from monai.transforms import Resize, ScaleIntensityRange

    if voxels.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {voxels.shape}")
    if affine is not None:
        voxels = to_display_orientation(voxels, affine)
    volume = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))[None]
    if hounsfield:  # raw CT: window first, as the training data were display-windowed
        volume = ScaleIntensityRange(window[0], window[1], 0.0, 1.0, clip=True)(volume)
    depth = snap_depth(voxels.shape[2], max_depth)
    resized = _plain(Resize((size, size, depth), mode="trilinear")(volume))
    scaled = torch.from_numpy(_unit_range(resized.numpy()))
    return scaled.repeat(3, 1, 1, 1).contiguous()


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, S, S, D_i) images -> (1, n, 3, S, S, D). Depths differ when 2D and 3D mix: shallower ones repeat slices."""
    if not images:
        raise ValueError("no images to stack")
    depth = max(image.shape[-1] for image in images)
    shaped = []
    for image in images:
        if image.shape[-1] != depth:
            flat = image.reshape(1, -1, image.shape[-1])
            image = torch.nn.functional.interpolate(flat, size=depth, mode="nearest").reshape(*image.shape[:-1], depth)
        shaped.append(image)
    return torch.stack(shaped)[None]


def image_placeholders(n_images: int, tokens_per_image: int = 32) -> str:
    """`<image><image0>...<image31></image>` per image; visual token numbers run on across images."""
    blocks = []
    for s in range(n_images):
        inner = "".join(f"<image{s * tokens_per_image + j}>" for j in range(tokens_per_image))
        blocks.append(f"<image>{inner}</image>")
    return "".join(blocks)


def build_prompt(question: str, n_images: int, tokens_per_image: int = 32) -> str:
    """The images first, then the question: the layout of RadFM's demo and of the fine-tuning recipe."""
    question = " ".join(question.split())
    if not question:
        raise ValueError("the question is empty")
    return image_placeholders(n_images, tokens_per_image) + question
