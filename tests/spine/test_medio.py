"""Medical I/O on real files: the example DICOM series and NIfTI volumes, pydicom's CT_small."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medagent.tools.errors import CaseError
from medagent.tools.medio import read_dicom_series, read_nifti, safe_metadata, sniff


def test_dicom_series_is_ordered_in_hounsfield_units_with_geometry(examples):
    info = sniff(examples / "data" / "ct_dicom")
    assert (info.format, info.modality, info.files) == ("dicom", "CT", 20)
    volume = read_dicom_series(examples / "data" / "ct_dicom")
    assert volume.voxels.shape == (512, 512, 20)
    assert volume.units == "HU"
    assert volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0), abs=1e-4)
    # Air outside the body is about -1000 HU and no CT value is below -1024 after rescaling.
    assert volume.voxels.min() >= -1025 and np.percentile(volume.voxels, 5) < -900
    # Slices are sorted by position: the z coordinate increases by one slice step each time.
    z = [float(volume.affine[2, 3] + k * volume.affine[2, 2]) for k in range(3)]
    assert z[1] - z[0] == pytest.approx(2.0)


def test_dicom_series_matches_the_reference_nifti_grid(examples):
    """The series read here has the geometry TotalSegmentator's segmentation of it has (PAIRS.md)."""
    volume = read_dicom_series(examples / "data" / "ct_dicom")
    # z from -804.5 to -766.5 mm (LPS and RAS agree on z).
    assert volume.affine[2, 3] == pytest.approx(-804.5)
    assert volume.affine[2, 3] + 19 * volume.affine[2, 2] == pytest.approx(-766.5)


def test_nifti_ct_and_mr(examples):
    ct = read_nifti(examples / "data" / "ct_small.nii.gz", "ct")
    assert ct.voxels.shape == (122, 101, 30) and ct.modality == "CT" and ct.units == "HU"
    assert ct.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert ct.orientation == "RAS"
    mr = read_nifti(examples / "data" / "mr_small.nii.gz", "MR")
    assert mr.units == "intensity" and mr.orientation == "LPS"


def test_safe_metadata_drops_identifiers():
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert str(ds.PatientName)  # the file really carries a name
    metadata = safe_metadata(ds)
    assert metadata["Modality"] == "CT"
    assert str(ds.PatientName) not in repr(metadata)
    assert not any("Patient" in key or "Date" in key for key in metadata)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00garbage", "DICOM"),
        (b"hello", "unrecognised file format"),
    ],
)
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "scan.bin"
    path.write_bytes(content)
    with pytest.raises(CaseError, match=message) as error:
        sniff(path)
        read_dicom_series(path)
    assert str(path) in str(error.value)
