"""SAT's preprocessing on hand-built volumes: the CT window and z-score, MR percentiles, RAS at 1x1x3 mm, the way
back to the input grid, and the padding note when the scan is smaller than one window."""

from __future__ import annotations

import numpy as np
import pytest

from medagent.specialists.sat.infer import segment, window_count
from medagent.specialists.sat.load import load_sat
from medagent.specialists.sat.preprocess import normalise, prepare

LPS = np.diag([-0.5, -0.5, 1.5, 1.0])  # 0.5 x 0.5 x 1.5 mm, stored L-P-S (as DICOM arrives)


def test_ct_is_clipped_to_minus_500_1000_then_z_scored():
    raw = np.array([-1024.0, -500.0, 0.0, 40.0, 1000.0, 3000.0], dtype=np.float32).reshape(1, 2, 3)
    clipped = np.array([-500.0, -500.0, 0.0, 40.0, 1000.0, 1000.0])
    out, how = normalise(raw, "ct")
    np.testing.assert_allclose(out.ravel(), (clipped - clipped.mean()) / clipped.std(), rtol=1e-5)
    assert "[-500, 1000]" in how


@pytest.mark.parametrize("modality", ["mri", "pet"])
def test_mr_and_pet_are_clipped_to_their_percentiles_then_z_scored(modality):
    rng = np.random.default_rng(0)
    raw = rng.normal(300, 50, size=(20, 20, 10)).astype(np.float32)
    raw[0, 0, 0], raw[1, 1, 1] = 1e6, -1e6  # outliers the clip removes
    low, high = np.percentile(raw, [0.5, 99.5])
    out, how = normalise(raw, modality)
    clipped = np.clip(raw, low, high)
    np.testing.assert_allclose(out, (clipped - clipped.mean()) / clipped.std(), rtol=1e-4, atol=1e-5)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-4 and "0.5-99.5 percentiles" in how


def test_a_scan_is_reoriented_to_ras_and_resampled_to_1x1x3_mm_and_maps_back():
    import nibabel as nib

    voxels = np.full((40, 40, 12), 100.0, dtype=np.float32)  # all foreground (> 0): no crop
    prepared = prepare(voxels, LPS, "ct")
    assert "".join(nib.aff2axcodes(prepared.affine)) == "RAS"
    np.testing.assert_allclose(prepared.spacing, (1.0, 1.0, 3.0), atol=1e-6)
    assert prepared.image.shape == (20, 20, 6)  # 20 mm x 20 mm x 18 mm
    block = np.zeros(prepared.image.shape, dtype=np.uint8)
    block[:10] = 1  # the patient's right half in RAS: high i in the L-P-S input
    back = prepared.to_input_grid(block)
    assert back.shape == voxels.shape
    assert back[21:].all() and not back[:19].any()


def test_the_foreground_crop_uses_raw_values_above_zero():
    voxels = np.full((30, 30, 9), -1000.0, dtype=np.float32)
    voxels[5:15, 10:20, 3:6] = 50.0  # soft tissue; air around it
    prepared = prepare(voxels, np.diag([1.0, 1.0, 3.0, 1.0]), "ct")
    assert prepared.image.shape == (10, 10, 3)
    assert prepared.crop == (slice(5, 15), slice(10, 20), slice(3, 6))


def test_window_count_follows_monai_half_overlap():
    assert window_count((483, 322, 14), (288, 288, 96), 0.5) == 3 * 2 * 1
    assert window_count((288, 288, 96), (288, 288, 96), 0.5) == 1


def test_a_scan_smaller_than_one_window_is_padded_and_says_so(tiny_dir):
    model = load_sat(tiny_dir)
    voxels = np.full((40, 40, 8), 60.0, dtype=np.float32)
    result = segment(model, voxels, np.diag([1.0, 1.0, 3.0, 1.0]), "ct", ["liver"], window=(64, 64, 32))
    assert result.padded_from == (40, 40, 8) and result.windows == 1
    assert "smaller than one 64x64x32 window" in result.notes[0] and "zero-padded" in result.notes[0]
    assert result.masks["liver"].shape == voxels.shape and result.masks["liver"].dtype == bool
