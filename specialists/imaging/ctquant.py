"""Quantitative CT without weights: body, lungs, bone and fat from Hounsfield units; volumes; lung density.

Classical image analysis on a HU volume indexed (i, j, k) with k the axial (slice) axis:
- body: tissue denser than -500 HU, the largest connected part, holes filled slice by slice
  (so the lungs and bowel gas are inside it, the air around the patient and the table are not);
- lungs: air-density voxels (< -400 HU) inside the body, in large connected parts; bowel gas
  (nearly pure air, no vessels) and the trachea (a small, medial, pure-air tube) are removed;
  vessels inside the lungs are filled in slice by slice, as lung segmentations usually include them;
- bone: >= 200 HU inside the body (contrast-filled vessels can reach this too: see `limits`);
- fat: -190 to -30 HU inside the body, outside the lungs (the usual adipose window).
Lung density: mean, 15th percentile (Perc15) and the emphysema index (% of lung voxels < -950 HU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

BODY_HU = -500.0
LUNG_AIR_HU = -400.0
BONE_HU = 200.0
FAT_HU = (-190.0, -30.0)
EMPHYSEMA_HU = -950.0
# A component whose interior median is below -940 HU is bowel or stomach gas, not parenchyma: lung
# parenchyma with its vessels has a median near -800 HU (measured: lungs -800/-816, gas -954 to -978).
GAS_MEDIAN_HU = -940.0
TRACHEA_MAX_AREA_MM2 = 450.0
TRACHEA_MEAN_HU = -900.0
MIN_LUNG_ML = 5.0

LABELS = {1: "lungs", 2: "bone", 3: "fat", 4: "other soft tissue"}

# In-plane connectivity only: filling holes with it fills each axial slice on its own.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)


@dataclass
class CTQuantification:
    """Masks (boolean arrays on the input grid) and the numbers a radiologist would read off them."""

    masks: dict[str, np.ndarray]
    volumes_ml: dict[str, float]
    lung_density: dict[str, float] | None
    spacing_mm: tuple[float, float, float]
    limits: list[str] = field(default_factory=list)

    def label_map(self) -> np.ndarray:
        """One uint8 label volume (ids in LABELS); lungs win over fat, bone over soft tissue."""
        labels = np.zeros(self.masks["body"].shape, dtype=np.uint8)
        labels[self.masks["body"]] = 4
        labels[self.masks["fat"]] = 3
        labels[self.masks["bone"]] = 2
        labels[self.masks["lungs"]] = 1
        return labels


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(sizes.argmax())


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: the largest part denser than -500 HU, each axial slice's holes filled."""
    dense = hu > BODY_HU
    # A small opening detaches the table and blankets, which touch the body only through thin contacts.
    dense = ndimage.binary_opening(dense, structure=_IN_PLANE, iterations=2)
    body = _largest_component(dense)
    return ndimage.binary_fill_holes(body, structure=_IN_PLANE)


def _remove_trachea(
    candidates: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Drop slice components that are small, medial and pure air: the trachea and main bronchi."""
    pixel_mm2 = spacing[0] * spacing[1]
    kept = candidates.copy()
    for k in range(candidates.shape[2]):
        plane = candidates[:, :, k]
        if not plane.any():
            continue
        body_i = np.nonzero(body[:, :, k].any(axis=1))[0]
        if body_i.size == 0:
            continue
        centre_i, half_width = (body_i[0] + body_i[-1]) / 2.0, (body_i[-1] - body_i[0]) / 2.0
        labelled, count = ndimage.label(plane)
        for index, region in enumerate(ndimage.find_objects(labelled), start=1):
            part = labelled[region] == index
            area_mm2 = part.sum() * pixel_mm2
            if area_mm2 > TRACHEA_MAX_AREA_MM2:
                continue
            centroid_i = region[0].start + np.nonzero(part)[0].mean()
            medial = abs(centroid_i - centre_i) < 0.2 * max(half_width, 1.0)
            if medial and hu[:, :, k][region][part].mean() < TRACHEA_MEAN_HU:
                kept[:, :, k][region][part] = False
    return kept


def lung_mask(hu: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, list[str]]:
    """Air-density regions inside the body that look like lung; notes on what was removed."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    candidates = (hu < LUNG_AIR_HU) & body
    candidates = _remove_trachea(candidates, hu, body, spacing)
    labelled, count = ndimage.label(candidates)
    notes: list[str] = []
    if count == 0:
        return np.zeros_like(candidates), notes
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    # The interior (one voxel in from the edge, away from partial volume) tells gas from lung.
    interior = ndimage.binary_erosion(candidates, structure=_IN_PLANE, iterations=1)
    parts = [int(i) for i in np.argsort(sizes)[::-1] if i and sizes[i] * voxel_ml >= MIN_LUNG_ML]
    tissue, gas_ml = [], 0.0
    for index in parts:
        part = labelled == index
        inner = hu[part & interior]
        if float(np.median(inner if inner.size else hu[part])) < GAS_MEDIAN_HU:
            gas_ml += sizes[index] * voxel_ml
        else:
            tissue.append(index)
    # Both lungs, or one lung, or lung pieces split by the scan's edge: parts at least a tenth of the largest.
    lungs = (
        np.isin(labelled, [i for i in tissue if sizes[i] >= 0.1 * sizes[tissue[0]]])
        if tissue
        else np.zeros_like(candidates)
    )
    if gas_ml:
        notes.append(
            f"{gas_ml:.0f} mL of air-density regions with a near-pure-air interior (median < {GAS_MEDIAN_HU:.0f} HU) "
            "left out as bowel/stomach gas; severe emphysema could look the same"
        )
    # Vessels and nodules inside the lungs are holes in the air mask: fill them slice by slice.
    lungs = ndimage.binary_fill_holes(lungs, structure=_IN_PLANE)
    return lungs, notes


def lung_density(hu: np.ndarray, lungs: np.ndarray) -> dict[str, float] | None:
    """Mean lung density, 15th percentile density and emphysema index (% voxels < -950 HU)."""
    values = hu[lungs]
    if values.size == 0:
        return None
    return {
        "mean_hu": round(float(values.mean()), 1),
        "perc15_hu": round(float(np.percentile(values, 15)), 1),
        "emphysema_index_pct": round(100.0 * float((values < EMPHYSEMA_HU).mean()), 2),
        "voxels": int(values.size),
    }


def quantify(hu: np.ndarray, spacing: tuple[float, float, float]) -> CTQuantification:
    """Everything above for one CT volume in HU with its voxel spacing in mm (i, j, k)."""
    if hu.ndim != 3:
        raise ValueError(f"expected a 3D CT volume, found shape {hu.shape}")
    if min(hu.shape) < 3:
        raise ValueError(
            f"a volume of {hu.shape} voxels has fewer than 3 slices along one axis; ct_quant needs a volume"
        )
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"voxel spacing {spacing} is not usable for measurements in millimetres")
    hu = hu.astype(np.float32, copy=False)
    limits: list[str] = []
    if float(np.percentile(hu, 1)) > -500.0:
        limits.append("almost no air in the volume: HU values look unlike CT (is it really CT in Hounsfield units?)")
    body = body_mask(hu)
    lungs, notes = lung_mask(hu, body, spacing)
    limits.extend(notes)
    bone = (hu >= BONE_HU) & body
    fat = (hu >= FAT_HU[0]) & (hu <= FAT_HU[1]) & body & ~ndimage.binary_dilation(lungs, iterations=1)
    limits.append("bone is every voxel >= 200 HU in the body: contrast-filled vessels and metal count as bone")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    masks = {"body": body, "lungs": lungs, "bone": bone, "fat": fat}
    volumes = {name: round(float(mask.sum()) * voxel_ml, 1) for name, mask in masks.items()}
    return CTQuantification(masks, volumes, lung_density(hu, lungs), tuple(float(s) for s in spacing), limits)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks on the same grid (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total
