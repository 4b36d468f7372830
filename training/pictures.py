"""Synthetic 2D pictures for the image-text smoke runs (PMC-CLIP, MedVInT-TD): each draws one distinct shape or
texture on a PIL canvas of side `s`, so a tiny model can tell eight pictures apart. Shared so both recipes draw the
very same pictures."""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw


def disc(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.ellipse((s * 0.08, s * 0.08, s * 0.45, s * 0.45), fill=(250, 250, 250))


def square(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.rectangle((s * 0.55, s * 0.55, s * 0.92, s * 0.92), fill=(10, 10, 10))


def triangle(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.polygon([(s * 0.5, s * 0.15), (s * 0.15, s * 0.85), (s * 0.85, s * 0.85)], fill=(220, 30, 30))


def ring(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.ellipse((s * 0.2, s * 0.2, s * 0.8, s * 0.8), outline=(40, 220, 60), width=max(2, s // 12))


def stripes(draw: ImageDraw.ImageDraw, s: int) -> None:
    for y in range(0, s, max(4, s // 8)):
        draw.rectangle((0, y, s, y + max(2, s // 16)), fill=(30, 60, 230))


def checkerboard(draw: ImageDraw.ImageDraw, s: int) -> None:
    step = max(4, s // 8)
    for y in range(0, s, step):
        for x in range(0, s, step):
            if (x // step + y // step) % 2:
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=(0, 0, 0))


def dots(draw: ImageDraw.ImageDraw, s: int) -> None:
    rng = np.random.default_rng(7)  # the same dots every time: the picture is a fixed sample, not noise
    for _ in range(40):
        x, y = (float(v) for v in rng.integers(0, s, 2))
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(255, 255, 255))
