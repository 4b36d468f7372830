"""SAT's preprocessing, as the authors' inference does it (MODELS.md section 7, MODELS_corrections.md SAT 12-13).

In order, on a scan with a RAS+ affine (mm):

1. orientation **RAS** (MONAI `Orientation(axcodes="RAS")`; the authors' jsonl may give another `orientation_code`,
   e.g. ASR for sagittal spine, but RAS is their default and the only one used here): a permutation / flip of the
   axes, no resampling;
2. spacing **1 x 1 x 3 mm**, bilinear (MONAI `Spacing(pixdim=(1, 1, 3), mode="bilinear")`);
3. crop to the foreground, MONAI `CropForeground`'s default criterion (value > 0) on the **raw** intensities
   (for CT: the bounding box of voxels above 0 HU);
4. intensities: **CT** clipped to [-500, 1000] then z-scored over the volume; **MR / PET** (every non-CT modality)
   clipped to the 0.5-99.5 percentiles then z-scored.

`Prepared` keeps what is needed to put a mask back on the input grid (`to_input_grid`): un-crop, resample with
nearest neighbours to the input's voxel grid, undo the reorientation. The authors save masks in the processed grid
with an identity affine; inverting is medagent's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPACING_MM = (1.0, 1.0, 3.0)
ORIENTATION = "RAS"
CT_WINDOW = (-500.0, 1000.0)
PERCENTILES = (0.5, 99.5)


@dataclass
class Prepared:
    """A scan after SAT's preprocessing, and the way back to the input grid."""

    image: np.ndarray  # (H, W, D) float32, normalised, in the cropped processed grid
    affine: np.ndarray  # of `image` (RAS, 1x1x3 mm, crop offset included)
    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    canonical_shape: tuple[int, int, int]  # the input reoriented to RAS
    canonical_affine: np.ndarray
    resampled_shape: tuple[int, int, int]  # after the spacing step, before the crop
    resampled_affine: np.ndarray
    crop: tuple[slice, slice, slice]  # of the resampled grid
    modality: str  # SAT's code: ct, mri, us, pet
    normalisation: str

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    def to_input_grid(self, mask: np.ndarray) -> np.ndarray:
        """A mask (or label map) of the processed grid on the input's voxel grid (nearest neighbours)."""
        import nibabel as nib

        full = np.zeros(self.resampled_shape, dtype=mask.dtype)
        full[self.crop] = mask
        canonical = resample(full, self.resampled_affine, self.canonical_affine, self.canonical_shape, "nearest")
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(self.canonical_affine), nib.orientations.io_orientation(self.input_affine)
        )
        back = nib.orientations.apply_orientation(canonical, ornt)
        return np.ascontiguousarray(back.astype(mask.dtype))


def to_ras(voxels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: the voxels reordered to RAS and the matching affine (as MONAI's Orientation("RAS") does)."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(voxels, dtype=np.float32), affine))
    return np.ascontiguousarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)


def resample(
    array: np.ndarray, affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...], mode: str
) -> np.ndarray:  # fmt: skip
    """`array` (on `affine`) resampled onto the grid (`dst_affine`, `dst_shape`) with MONAI's SpatialResample; input
    voxels up to half a processed voxel beyond its grid take the edge value (border padding)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    source = MetaTensor(torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None], affine=torch.as_tensor(affine))
    out = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float32)(
        source, dst_affine=torch.as_tensor(dst_affine), spatial_size=tuple(int(n) for n in dst_shape)
    )
    return np.asarray(out[0].detach().cpu().numpy())


def to_spacing(image: np.ndarray, affine: np.ndarray, spacing=SPACING_MM) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Step 2: bilinear resampling to `spacing` mm (MONAI's Spacing, which picks the output grid)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    source = MetaTensor(torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32))[None], affine=torch.as_tensor(affine))
    out = Spacing(pixdim=spacing, mode="bilinear", dtype=torch.float32)(source)
    return np.asarray(out[0].numpy()), np.asarray(out.affine.numpy(), dtype=np.float64)


def foreground_box(image: np.ndarray) -> tuple[slice, slice, slice]:
    """Step 3: the bounding box of voxels > 0 (MONAI CropForeground's default); the whole grid when none is."""
    found = np.nonzero(image > 0)
    if not found[0].size:
        return tuple(slice(0, n) for n in image.shape)  # type: ignore[return-value]
    return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in found)  # type: ignore[return-value]


def normalise(image: np.ndarray, modality: str) -> tuple[np.ndarray, str]:
    """Step 4: CT clipped to [-500, 1000], other modalities to their 0.5-99.5 percentiles; then z-scored."""
    image = np.asarray(image, dtype=np.float32)
    if modality == "ct":
        low, high = CT_WINDOW
        how = f"CT clipped to [{low:g}, {high:g}] HU then z-scored"
    else:
        low, high = (float(v) for v in np.percentile(image, PERCENTILES))
        how = (
            f"{modality.upper()} clipped to the {PERCENTILES[0]:g}-{PERCENTILES[1]:g} percentiles "
            f"([{low:.4g}, {high:.4g}]) then z-scored"
        )
    clipped = np.clip(image, low, high)
    mean, std = float(clipped.mean()), float(clipped.std())
    return ((clipped - mean) / max(std, 1e-8)).astype(np.float32), how


def prepare(voxels: np.ndarray, affine: np.ndarray, modality: str, spacing=SPACING_MM) -> Prepared:  # noqa: ANN001
    """The four steps on a scan (`modality`: SAT's code, ct / mri / us / pet)."""
    voxels = np.asarray(voxels, dtype=np.float32)
    if voxels.ndim != 3:
        raise ValueError(f"SAT reads one 3D volume, got an array of shape {voxels.shape}")
    canonical, canonical_affine = to_ras(voxels, affine)
    resampled, resampled_affine = to_spacing(canonical, canonical_affine, spacing)
    crop = foreground_box(resampled)
    cropped = resampled[crop]
    offset = np.eye(4)
    offset[:3, 3] = [s.start for s in crop]
    image, how = normalise(cropped, modality)
    return Prepared(
        image=image,
        affine=resampled_affine @ offset,
        input_shape=tuple(int(n) for n in voxels.shape),  # type: ignore[arg-type]
        input_affine=np.asarray(affine, dtype=np.float64),
        canonical_shape=tuple(int(n) for n in canonical.shape),  # type: ignore[arg-type]
        canonical_affine=canonical_affine,
        resampled_shape=tuple(int(n) for n in resampled.shape),  # type: ignore[arg-type]
        resampled_affine=resampled_affine,
        crop=crop,
        modality=modality,
        normalisation=how,
    )
