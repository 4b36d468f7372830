"""Pathology images in: open with a size guard, make RGB, cut into tissue tiles, KEP's transform.

KEP's transform is open_clip's eval transform, Resize(224, bicubic) + CenterCrop(224) + mean/std: OpenAI CLIP's for KEP-32 (its CLIP ViT
tower; the authors' eval and training transforms use them), ImageNet's for the other variants. Large images are
cut into square tiles of `tile_size` source pixels (the magnification proxy: a larger tile is a
lower effective magnification once resized to 224); tiles that are mostly glass are skipped, and
at most `max_tiles` (those with the most tissue) are kept. Tiles are cropped from the decoded image
one batch at a time, so tensor memory stays bounded by the batch size, not the image size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# open_clip.constants' values, written out so that opening an image does not import open_clip (~4 s); a test
# checks they are equal.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# KEP-32's image tower is an OpenAI-CLIP-style ViT without its own image_mean, so the authors' image_transform
# falls back to OpenAI CLIP's statistics (checked against their code: tests/pathology/test_parity.py). KEP-CTP
# uses ImageNet's; KEP-16 (BiomedCLIP tower) and KEEP keep ImageNet's here (not checked against an oracle).
VARIANT_STATS = {"kep32": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}


class PathologyInputError(ValueError):
    """The image cannot be classified (unreadable, too large, empty)."""


@dataclass(frozen=True)
class TilingOptions:
    tile_size: int = 512
    max_tiles: int = 64
    batch_size: int = 16
    background_fraction: float = 0.8  # a tile with more glass/blank than this is skipped
    max_pixels: int = 150_000_000  # decoded RGB is 3 bytes a pixel: ~450 MB at this limit


@dataclass(frozen=True)
class Tile:
    box: tuple[int, int, int, int]  # left, top, right, bottom in source pixels
    tissue: float  # fraction of the tile that is not background


def open_rgb(path: Path, max_pixels: int = TilingOptions.max_pixels) -> Image.Image:
    """Decode an image as 8-bit RGB: grey is repeated, alpha is laid over white glass, 16-bit is rescaled."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise PathologyInputError(f"{path}: image is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise PathologyInputError(f"{path}: not a readable image (PNG, JPEG or TIFF expected)") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PathologyInputError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels:,}; export a lower-magnification "
            "level or a region of the slide (e.g. with OpenSlide) and attach that"
        )
    if width < 8 or height < 8:
        raise PathologyInputError(f"{path}: {width}x{height} pixels is too small to classify")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except OSError as exc:
        raise PathologyInputError(f"{path}: image data is truncated or corrupt ({exc})") from exc
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grey: stretch to 8 bits rather than clipping at 255 as PIL's convert does.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def needs_tiling(size: tuple[int, int], tile_size: int) -> bool:
    """A patch-sized image is classified whole; anything well beyond one tile is tiled."""
    return max(size) > 1.5 * tile_size


def _background_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Glass and blank areas: bright and unsaturated, or near-black (scanner borders)."""
    # Integer arithmetic on the uint8 thumbnail (sum of channels = 3x the mean brightness): a float copy of a
    # 2048 px thumbnail would be the largest allocation of the whole tiling.
    spread = thumbnail.max(axis=2) - thumbnail.min(axis=2)
    brightness3 = thumbnail.sum(axis=2, dtype=np.uint16)
    return ((brightness3 > 3 * 215) & (spread < 25)) | (brightness3 < 3 * 20)


def plan_tiles(image: Image.Image, options: TilingOptions) -> tuple[list[Tile], int]:
    """Tiles to classify (most tissue first, at most max_tiles) and how many grid tiles there were."""
    width, height = image.size
    tile_w, tile_h = min(options.tile_size, width), min(options.tile_size, height)
    boxes = [
        (x, y, x + tile_w, y + tile_h)
        for y in range(0, height - tile_h + 1, tile_h)
        for x in range(0, width - tile_w + 1, tile_w)
    ]
    # Background is judged on a thumbnail so the check costs little even for very large images.
    scale = max(1, max(width, height) // 2048)
    thumbnail = np.asarray(image.reduce(scale) if scale > 1 else image)
    mask = _background_mask(thumbnail)
    tiles = []
    for left, top, right, bottom in boxes:
        region = mask[
            top // scale : max(top // scale + 1, bottom // scale),
            left // scale : max(left // scale + 1, right // scale),
        ]
        tiles.append(Tile((left, top, right, bottom), float(1.0 - region.mean())))
    tissue = [t for t in tiles if t.tissue >= 1.0 - options.background_fraction]
    chosen = tissue or tiles  # an all-glass image is still classified rather than silently empty
    chosen = sorted(chosen, key=lambda t: (-t.tissue, t.box[1], t.box[0]))[: options.max_tiles]
    return chosen, len(boxes)


def kep_transform(image_size: int = 224, variant: str | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """KEP's (and KEEP's) evaluation transform, open_clip's own `image_transform(is_train=False)` as the authors use
    it: bicubic resize of the short side, centre crop, RGB, the variant's norm (OpenAI CLIP mean/std for kep32,
    ImageNet otherwise; no variant = ImageNet). PIL RGB image -> 3xSxS float tensor."""
    from open_clip.transform import image_transform

    mean, std = VARIANT_STATS.get(variant or "", (IMAGENET_MEAN, IMAGENET_STD))
    return image_transform(image_size, is_train=False, mean=mean, std=std)
