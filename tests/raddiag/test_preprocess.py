"""RadDiag preprocessing on small hand-made arrays whose expected values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medagent.specialists.raddiag.model import RadDiagConfig
from medagent.specialists.raddiag.preprocess import RadDiagInputError, Scan, modality_ids, prepare_case


def _config(fusion: str, size: int = 2, depth: int = 4) -> RadDiagConfig:
    return RadDiagConfig(fusion=fusion, image_size=size, max_depth=depth)


def _stack(values: list[float], size: int = 2) -> np.ndarray:
    """A (size, size, len(values)) volume whose slice k is the constant values[k]."""
    return np.stack([np.full((size, size), v, np.float32) for v in values], axis=2)


def test_late_subsamples_uniformly_then_scales_each_scan() -> None:
    scan = Scan(_stack([100, 101, 102, 103, 104, 105, 106]), "CT", np.eye(4))
    prepared = prepare_case([scan], _config("late"))
    # 7 slices into 4: slices 0, 2, 4, 6 (values 100, 102, 104, 106), then (v - 100) / 6
    assert np.allclose(prepared.scans[0, 0, :, 0, 0].numpy(), [0, 1 / 3, 2 / 3, 1])
    assert prepared.slice_valid.tolist() == [[[True] * 4]]
    assert prepared.slices_used == [4] and prepared.slices_total == [7]


def test_short_scans_are_zero_padded_and_marked() -> None:
    prepared = prepare_case([Scan(_stack([3, 5, 7]), "MR", None)], _config("late"))
    assert prepared.slice_valid.tolist() == [[[True, True, True, False]]]
    assert np.allclose(prepared.scans[0, 0, :, 1, 1].numpy(), [0, 0.5, 1, 0])


def test_in_plane_resize_is_bilinear() -> None:
    ramp = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)[..., None]  # one slice, columns 0 and 1
    prepared = prepare_case([Scan(ramp, "CT", None)], _config("late", size=4))
    # half-pixel-centred bilinear from 2 to 4 samples: 0, 0.25, 0.75, 1 along each row
    assert np.allclose(prepared.scans[0, 0, 0].numpy(), [[0, 0.25, 0.75, 1]] * 4)


def test_early_scales_the_whole_zero_filled_case_and_numbers_modalities_by_plane() -> None:
    ct = Scan(_stack([10, 20]), "CT", None)
    mr = Scan(_stack([5]), "MR", None)
    ct2 = Scan(_stack([40]), "CT", None)
    prepared = prepare_case([ct, mr, ct2], _config("early"))
    # the padding zeros are the minimum, 40 the maximum: every value divided by 40
    assert np.allclose(prepared.scans[0, :3, :2, 0, 0].numpy(), [[0.25, 0.5], [0.125, 0], [1, 0]])
    assert float(prepared.scans[0, 3].abs().max()) == 0.0
    assert prepared.modality.tolist() == [[1, 4, 2, 0]]
    assert prepared.slice_valid[0].sum(dim=1).tolist() == [2, 1, 1, 0]


def test_a_picture_is_three_slices_in_early_and_one_in_late_fusion() -> None:
    picture = np.array([[0, 255], [255, 0]], np.uint8)
    early = prepare_case([Scan(picture, "DX")], _config("early"))
    late = prepare_case([Scan(picture, "DX")], _config("late"))
    assert early.slices_used == [3] and late.slices_used == [1]
    assert np.allclose(early.scans[0, 0, 2].numpy(), [[0, 1], [1, 0]]) and early.modality.tolist()[0][0] == 7


def test_modality_ids_follow_the_authors_table() -> None:
    assert modality_ids(["CT", "CT", "MR", "CT", "CT"]) == [1, 2, 4, 3, 3]
    assert modality_ids(["DX", "CR", "DX"]) == [7, 8, 8]
    assert modality_ids(["US", "RF", "MG", "XA", "NM", "PT"]) == [9, 11, 12, 13, 14, 14]
    with pytest.raises(RadDiagInputError, match="modality 'ECG' is not one RadDiag knows"):
        modality_ids(["ECG"])


def test_scans_without_a_usable_slice_are_refused_and_empty_slices_dropped() -> None:
    with pytest.raises(RadDiagInputError, match="ct: no usable slice"):
        prepare_case([Scan(np.full((4, 4, 3), np.nan, np.float32), "CT", name="ct")], _config("late"))
    with pytest.raises(RadDiagInputError, match="no usable slice"):
        prepare_case([Scan(np.zeros((4, 4, 0), np.float32), "CT", name="ct")], _config("late"))
    partly = _stack([1, 2, 3])
    partly[..., 1] = np.nan
    prepared = prepare_case([Scan(partly, "CT")], _config("late"))
    assert prepared.slices_used == [2] and np.allclose(prepared.scans[0, 0, :2, 0, 0].numpy(), [0, 1])
    with pytest.raises(RadDiagInputError, match="at most 4 scans"):
        prepare_case([Scan(_stack([1]), "CT")] * 5, _config("early"))
