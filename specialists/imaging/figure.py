"""A picture of one axial slice with masks outlined, for the report (matplotlib, Agg: no display needed).

Drawn in the radiological convention: the patient's right on the viewer's left, anterior at the top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = ("#00e5ff", "#ffd400", "#ff4fd8", "#7CFC00", "#ff8c00", "#1e90ff")


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array reordered so that its axes run along R, A, S, with the spacing in that order."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras = nib.orientations.apply_orientation(array, ornt)
    ras_spacing = tuple(float(spacing[int(axis)]) for axis in np.argsort(ornt[:, 0]))
    return ras, ras_spacing  # type: ignore[return-value]


def representative_slice(mask: np.ndarray) -> int:
    """The axial slice (RAS array) where the mask covers the largest area; the middle one if empty."""
    areas = mask.reshape(-1, mask.shape[2]).sum(axis=0)
    return int(areas.argmax()) if areas.any() else mask.shape[2] // 2


def save_slice_png(
    voxels: np.ndarray,
    affine: np.ndarray,
    masks: dict[str, np.ndarray],
    path: Path,
    window: tuple[float, float] = (-1000.0, 400.0),
    title: str = "",
    slice_from: str | None = None,
) -> int:
    """Write a PNG of the slice where `masks[slice_from]` (default: the first mask) is largest.

    Returns the slice index in the RAS-ordered volume (0 = most inferior).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    image, spacing = to_ras(np.asarray(voxels, dtype=np.float32), affine)
    ras_masks = {name: to_ras(mask.astype(np.uint8), affine)[0] > 0 for name, mask in masks.items()}
    key = slice_from or next(iter(masks), None)
    k = representative_slice(ras_masks[key]) if key else image.shape[2] // 2

    def view(plane: np.ndarray) -> np.ndarray:
        # rows: anterior at the top; columns: patient's right on the left.
        return plane[::-1, ::-1].T

    figure = Figure(figsize=(6, 6 * image.shape[1] * spacing[1] / max(image.shape[0] * spacing[0], 1e-6) + 0.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(view(image[:, :, k]), cmap="gray", vmin=window[0], vmax=window[1], aspect=spacing[1] / spacing[0])
    handles = []
    for colour, (name, mask) in zip(COLOURS, ras_masks.items(), strict=False):
        plane = view(mask[:, :, k]).astype(np.float32)
        if plane.any():
            axes.contour(plane, levels=[0.5], colors=[colour], linewidths=1.2)
            handles.append(Line2D([0], [0], color=colour, label=name))
    if handles:
        axes.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.6)
    axes.set_title(title or f"axial slice {k + 1} of {image.shape[2]}", fontsize=9)
    axes.text(0.01, 0.5, "R", color="white", transform=axes.transAxes, fontsize=9)
    axes.text(0.97, 0.5, "L", color="white", transform=axes.transAxes, fontsize=9)
    axes.set_axis_off()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(str(path), dpi=100)
    return k
