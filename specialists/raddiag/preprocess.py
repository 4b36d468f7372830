"""Scans to RadDiag's input, as the authors' datasets build it (MODELS.md section 8 as corrected).

Every scan becomes a stack of grey slices:
- a volume is reoriented so its slices are axial (rows anterior->posterior, columns right->left, slices
  inferior->superior: the display layout of the authors' image-built volumes) and sliced along the last axis;
  a 2D picture is one slice (late fusion) or three identical slices (early fusion: the authors' X-ray arrays are
  256 x 256 x 3 with identical channels and count as 3 slices);
- each slice is resized in-plane to `image_size` (256) by bilinear interpolation (MONAI `Resize`);
- more than `max_depth` (32) slices are subsampled uniformly (`linspace(0, D - 1, 32)` rounded [I]: the exact
  index rule is not in the facts), fewer are zero-padded, and a mark vector says which slots hold a slice;
- min-max to [0, 1]: late fusion per scan before padding; early fusion over the whole zero-filled case array
  (the stored arrays are copied into zeros, then the sample is scaled with the padding included).

No mean/std and no HU window: the model takes the min-max slices as they are (raw CT is scaled as is; the
authors' training scans were display images, which this cannot know).

Modality ids (early fusion, `mod_embed` rows): 0 empty slot, CT 1-3 and MRI 4-6 by plane index, X-ray 7-8,
ultrasound 9, annotated image 10, fluoroscopy 11, mammography 12, DSA 13, nuclear medicine 14, barium 15.
A case's scans of one modality take the plane indices in order (the first CT is 1, the second 2, ...; beyond
the last plane id the last is reused [I]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from medagent.specialists.raddiag.model import RadDiagConfig

DISPLAY_AXES = ("P", "L", "S")
# (first id, planes) per modality group of the authors' Modality_dict
MODALITY_GROUPS = {
    "CT": (1, 3),
    "MRI": (4, 3),
    "X-ray": (7, 2),
    "Ultrasound": (9, 1),
    "Annotated image": (10, 1),
    "Fluoroscopy": (11, 1),
    "Mammography": (12, 1),
    "DSA": (13, 1),
    "Nuclear medicine": (14, 1),
    "Barium": (15, 1),
}
# DICOM modality codes (and the words cases use) -> the authors' modality groups
MODALITY_WORDS = {
    "CT": "CT", "MR": "MRI", "MRI": "MRI", "CR": "X-ray", "DX": "X-ray", "XR": "X-ray", "X-RAY": "X-ray",
    "US": "Ultrasound", "RF": "Fluoroscopy", "MG": "Mammography", "XA": "DSA", "NM": "Nuclear medicine",
    "PT": "Nuclear medicine", "PET": "Nuclear medicine",
}  # fmt: skip


class RadDiagInputError(ValueError):
    """A scan RadDiag cannot read (no usable slice, wrong shape, unknown modality)."""


@dataclass
class Scan:
    """One scan: a 3D volume (i, j, k) with its RAS affine, or a 2D picture (H, W) / (H, W, C); its modality."""

    pixels: np.ndarray
    modality: str | None
    affine: np.ndarray | None = None
    name: str = "scan"


@dataclass
class PreparedCase:
    scans: torch.Tensor  # (1, N, D, S, S) float32 in [0, 1]
    slice_valid: torch.Tensor  # (1, N, D) bool
    modality: torch.Tensor  # (1, N) long, 0 = empty slot
    slices_used: list[int] = field(default_factory=list)  # per given scan
    slices_total: list[int] = field(default_factory=list)
    modality_groups: list[str] = field(default_factory=list)


def modality_group(modality: str | None) -> str:
    word = (modality or "").strip()
    group = MODALITY_WORDS.get(word.upper()) or next((g for g in MODALITY_GROUPS if g.lower() == word.lower()), None)
    if group is None:
        raise RadDiagInputError(
            f"modality {modality!r} is not one RadDiag knows (CT, MR, CR/DX, US, RF, MG, XA, NM/PT)"
        )
    return group


def modality_ids(modalities: list[str | None]) -> list[int]:
    """The early-fusion id of each scan: its group's first id plus its plane index within the case."""
    seen: dict[str, int] = {}
    ids = []
    for modality in modalities:
        group = modality_group(modality)
        first, planes = MODALITY_GROUPS[group]
        ids.append(first + min(seen.get(group, 0), planes - 1))
        seen[group] = seen.get(group, 0) + 1
    return ids


def _axial_slices(scan: Scan, early: bool) -> np.ndarray:
    """(D, H, W) float32 slices; non-finite voxels become the scan's finite minimum, empty slices are dropped."""
    pixels = np.asarray(scan.pixels)
    if pixels.ndim == 3 and scan.affine is None and pixels.shape[2] in (3, 4) and min(pixels.shape[:2]) > 4:
        pixels = pixels[..., :3].mean(axis=2)  # an RGB(A) picture without geometry
    if pixels.ndim == 2:
        slices = np.repeat(pixels[None], 3 if early else 1, axis=0)
    elif pixels.ndim == 3:
        if scan.affine is not None:
            import nibabel.orientations as nio

            transform = nio.ornt_transform(nio.io_orientation(scan.affine), nio.axcodes2ornt(DISPLAY_AXES))
            pixels = nio.apply_orientation(pixels, transform)
        slices = np.moveaxis(pixels, 2, 0)
    else:
        raise RadDiagInputError(f"{scan.name}: expected a 2D picture or a 3D volume, got shape {pixels.shape}")
    slices = slices.astype(np.float32)
    finite = np.isfinite(slices)
    usable = finite.reshape(slices.shape[0], -1).any(axis=1) if slices.size else np.zeros(0, bool)
    if slices.ndim != 3 or min(slices.shape[1:], default=0) < 1 or not usable.any():
        raise RadDiagInputError(f"{scan.name}: no usable slice (shape {pixels.shape}, no finite voxels in any slice)")
    slices = slices[usable]
    if not finite[usable].all():
        slices = np.where(np.isfinite(slices), slices, np.nanmin(np.where(np.isfinite(slices), slices, np.nan)))
    return slices


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Bilinear in-plane resize of (D, H, W) to (D, size, size)."""
    if slices.shape[1:] == (size, size):
        return slices
    from monai.transforms import Resize

    resized = Resize((size, size), mode="bilinear")(torch.from_numpy(np.ascontiguousarray(slices)))
    return np.asarray(resized.as_subclass(torch.Tensor).numpy(), dtype=np.float32)


def subsample_indices(depth: int, max_depth: int) -> np.ndarray:
    """All slices when they fit, else `max_depth` uniformly spaced ones (first and last included)."""
    if depth <= max_depth:
        return np.arange(depth)
    return np.rint(np.linspace(0, depth - 1, max_depth)).astype(int)


def _unit_range(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def prepare_case(scans: list[Scan], config: RadDiagConfig) -> PreparedCase:
    """The model's inputs for one case: early fusion puts up to `max_scans` scans in one sample; late fusion gives
    one slot per scan (each to be scored on its own)."""
    early = config.fusion == "early"
    if not scans:
        raise RadDiagInputError("no scan to diagnose")
    if early and len(scans) > config.max_scans:
        raise RadDiagInputError(f"early fusion takes at most {config.max_scans} scans, got {len(scans)}")
    size, depth = config.image_size, config.max_depth
    groups = [modality_group(scan.modality) for scan in scans]
    slots = config.max_scans if early else len(scans)
    array = np.zeros((slots, depth, size, size), dtype=np.float32)
    valid = np.zeros((slots, depth), dtype=bool)
    modality = np.zeros(slots, dtype=np.int64)
    used, total = [], []
    for n, scan in enumerate(scans):
        slices = _axial_slices(scan, early)
        chosen = resize_slices(slices[subsample_indices(len(slices), depth)], size)
        array[n, : len(chosen)] = chosen if early else _unit_range(chosen)
        valid[n, : len(chosen)] = True
        used.append(len(chosen))
        total.append(len(slices))
    if early:
        array = _unit_range(array)
        modality[: len(scans)] = modality_ids([scan.modality for scan in scans])
    return PreparedCase(
        scans=torch.from_numpy(array)[None],
        slice_valid=torch.from_numpy(valid)[None],
        modality=torch.from_numpy(modality)[None],
        slices_used=used,
        slices_total=total,
        modality_groups=groups,
    )
