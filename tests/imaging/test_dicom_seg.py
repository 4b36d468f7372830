"""Masks written back as DICOM SEG: ct_quant and a MONAI bundle on the example DICOM series, read back.

The committed example series (examples/data/ct_dicom) was anonymised with its StudyInstanceUID and
SeriesInstanceUID blanked, so no SEG can reference it (test_ct_quant checks that it says so). The tests here
run on a copy with those two UIDs restored, plus a patient name and id that must not reach the SEG.

What a SEG holds is checked independently of medagent's code: the NIfTI mask is sampled at every source
pixel's patient position (from each instance's ImagePositionPatient, ImageOrientationPatient and
PixelSpacing, through the NIfTI's affine), and compared with the SEG's frames as pydicom and highdicom
decode them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medagent.tools.config import ImagingSettings, Settings
from medagent.tools.contracts import Case
from medagent.tools.imaging import TOOLS, SegmentArgs
from medagent.tools.intake import resolve_attachments
from medagent.tools.registry import AttachmentArgs, ToolContext

ROOT = Path(__file__).resolve().parents[2]
SERIES = ROOT / "examples" / "data" / "ct_dicom"
BUNDLE = ROOT / "tests" / "data" / "imaging" / "spleen_ct_segmentation"
CT_QUANT = next(tool for tool in TOOLS if tool.name == "imaging.ct_quant")
SEGMENT = next(tool for tool in TOOLS if tool.name == "imaging.segment")
NAME, PATIENT_ID = "Doe^Jane", "MRN12345"


def _copy_series(target: Path, change=None) -> Path:  # noqa: ANN001 - change(index, dataset) edits a copy
    """The example series with its study and series UIDs restored (and a name and id written in)."""
    target.mkdir(parents=True)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for index, file in enumerate(sorted(SERIES.iterdir())):
        ds = pydicom.dcmread(file)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = NAME, PATIENT_ID
        if change is not None:
            change(index, ds)
        ds.save_as(target / file.name)
    return target


def _run(tool, args, folder: Path, tmp_path: Path, settings: Settings | None = None):  # noqa: ANN001, ANN202
    case = Case.model_validate(
        {"id": "seg", "attachments": [{"id": "ct", "kind": "volume", "path": folder.name, "modality": "CT"}]}
    )
    loaded = resolve_attachments(case, folder.parent)
    ctx = ToolContext(loaded.case, folder.parent, tmp_path / "out" / "artifacts", settings or Settings())
    return tool.run(args, ctx), tmp_path / "out"


def _sources(folder: Path) -> dict[str, pydicom.Dataset]:
    """Source headers by SOP instance UID (the file meta's: the example blanked the dataset's own copy)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    return {str(ds.file_meta.MediaStorageSOPInstanceUID): ds for ds in headers}


def _nifti_at_source_pixels(mask: Path, source: pydicom.Dataset) -> np.ndarray:
    """The NIfTI's labels at each pixel (row, column) of one source instance, found by patient position."""
    image = nib.load(str(mask))
    data = np.asarray(image.dataobj)
    iop = np.array([float(v) for v in source.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    rows, columns = np.meshgrid(np.arange(source.Rows), np.arange(source.Columns), indexing="ij")
    # PS3.3 C.7.6.2.1.1: position = IPP + column * Δcolumn * (row direction) + row * Δrow * (column direction), LPS.
    lps = (
        np.array([float(v) for v in source.ImagePositionPatient])[:, None]
        + np.outer(iop[:3], columns.ravel() * column_spacing)
        + np.outer(iop[3:], rows.ravel() * row_spacing)
    )
    ras = np.vstack([-lps[0], -lps[1], lps[2], np.ones(lps.shape[1])])
    ijk = (np.linalg.inv(image.affine) @ ras)[:3]
    voxel = np.rint(ijk).astype(int)
    assert np.abs(ijk - voxel).max() < 1e-3  # every source pixel is a voxel centre of the mask: same grid
    assert all((voxel[a] >= 0).all() and (voxel[a] < data.shape[a]).all() for a in range(3))
    return data[voxel[0], voxel[1], voxel[2]].reshape(source.Rows, source.Columns)


def _check_seg_against_nifti(seg_path: Path, mask: Path, folder: Path, labels: dict[int, str]) -> int:
    """Everything a viewer relies on; returns the number of voxels compared."""
    sources = _sources(folder)
    first = next(iter(sources.values()))
    raw = pydicom.dcmread(seg_path)
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and raw.SegmentationType == "BINARY"
    assert raw.FrameOfReferenceUID == first.FrameOfReferenceUID and raw.StudyInstanceUID == first.StudyInstanceUID
    (referenced,) = raw.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(sources)
    # One segment per label, numbered 1..n in label order, labelled with the tool's names.
    assert [(s.SegmentNumber, s.SegmentLabel) for s in raw.SegmentSequence] == list(enumerate(labels.values(), 1))
    value_of = dict(enumerate(labels, 1))
    # Who made it, and that it is research software.
    assert raw.Manufacturer == "medagent" and raw.SoftwareVersions.startswith("medagent ")
    assert "research use only" in raw.SeriesDescription
    # No patient identifier from the source headers.
    assert str(raw.PatientName) == "" and raw.PatientID == ""
    assert NAME.encode() not in seg_path.read_bytes() and PATIENT_ID.encode() not in seg_path.read_bytes()

    # The frames, decoded by pydicom, against the NIfTI sampled at each source instance's pixels.
    expected = {uid: _nifti_at_source_pixels(mask, ds) for uid, ds in sources.items()}
    frames = raw.pixel_array.reshape(-1, first.Rows, first.Columns)
    shared = raw.SharedFunctionalGroupsSequence[0]
    seen = set()
    for frame, group in zip(frames, raw.PerFrameFunctionalGroupsSequence, strict=True):
        # With one segment highdicom states it once, in the shared functional groups.
        identification = group.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(identification[0].ReferencedSegmentNumber)
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in sources[uid].ImagePositionPatient])
        assert np.array_equal(frame.astype(bool), expected[uid] == value_of[number])
        seen.add((uid, number))
    for uid, labelled in expected.items():  # frames left out must be empty ones
        for number, value in value_of.items():
            assert (uid, number) in seen or not (labelled == value).any()
    # The same through highdicom's reader: one label map per source instance, in the series' order.
    uids = list(sources)
    seg = hd.seg.segread(seg_path)
    combined = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    lookup = np.zeros(max(labels) + 1, dtype=np.int64)
    for number, value in value_of.items():
        lookup[value] = number
    assert np.array_equal(combined, np.stack([lookup[expected[uid]] for uid in uids]))
    return int(sum(v.size for v in expected.values()))


def test_ct_quant_on_a_dicom_series_writes_a_seg_matching_its_nifti(tmp_path: Path) -> None:
    folder = _copy_series(tmp_path / "case" / "ct")
    (volumes, _), out = _run(CT_QUANT, AttachmentArgs(attachment="ct"), folder, tmp_path)
    assert volumes.artifacts == [
        "artifacts/ct_quant_ct.png",
        "artifacts/ct_quant_ct_labels.nii.gz",
        "artifacts/ct_quant_ct_seg.dcm",
    ]
    assert CT_QUANT.checked(volumes) == volumes
    line = volumes.payload["dicom_seg"]
    assert line.startswith("DICOM SEG written: ct_quant_ct_seg.dcm, 4 segments") and "\n" not in line
    labels = {int(k): v for k, v in volumes.payload["label_map"].items()}
    assert list(labels.values()) == ["lungs", "bone", "fat", "other soft tissue"]
    seg_path = out / "artifacts" / "ct_quant_ct_seg.dcm"
    compared = _check_seg_against_nifti(seg_path, out / "artifacts" / "ct_quant_ct_labels.nii.gz", folder, labels)
    assert compared == 20 * 512 * 512
    # Segments coded in SNOMED CT: tissues as tissue, the lungs as an anatomical structure.
    coded = {
        s.SegmentLabel: (
            s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
        )
        for s in pydicom.dcmread(seg_path).SegmentSequence
    }
    assert coded == {
        "lungs": ("91723000", "39607008"),
        "bone": ("85756007", "272673000"),
        "fat": ("85756007", "55603005"),
        "other soft tissue": ("85756007", "87784001"),
    }
    print(f"SEG {seg_path.stat().st_size} bytes, {compared} voxels compared")


def test_a_seg_that_highdicom_refuses_leaves_the_masks_and_says_why(tmp_path: Path) -> None:
    def tilt_one(index: int, ds: pydicom.Dataset) -> None:
        if index == 5:  # one instance claims another orientation: the series has no single plane to reference
            ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]

    folder = _copy_series(tmp_path / "case" / "ct", tilt_one)
    (volumes, _), out = _run(CT_QUANT, AttachmentArgs(attachment="ct"), folder, tmp_path)
    assert volumes.artifacts == ["artifacts/ct_quant_ct.png", "artifacts/ct_quant_ct_labels.nii.gz"]
    assert (out / "artifacts" / "ct_quant_ct_labels.nii.gz").is_file() and (
        out / "artifacts" / "ct_quant_ct.png"
    ).is_file()
    assert not (out / "artifacts" / "ct_quant_ct_seg.dcm").exists()
    line = volumes.payload["dicom_seg"]
    assert line.startswith("no DICOM SEG written: highdicom refused the source instances")
    assert "orientation" in line and "\n" not in line and "Traceback" not in line
    assert "CT tissue volumes" in volumes.summary  # the measurements stand


def _crop(folder: Path, target: Path, rows: slice, columns: slice) -> Path:
    """A 64×64 piece of each instance, stored uncompressed, its ImagePositionPatient moved to match."""
    target.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        ds = pydicom.dcmread(file)
        pixels = ds.pixel_array[rows, columns].copy()
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        origin = np.array([float(v) for v in ds.ImagePositionPatient])
        origin = origin + columns.start * column_spacing * iop[:3] + rows.start * row_spacing * iop[3:]
        ds.set_pixel_data(pixels, "MONOCHROME2", int(ds.BitsStored))
        ds.ImagePositionPatient = [float(v) for v in origin]
        ds.save_as(target / file.name)
    return target


def test_monai_bundle_on_a_dicom_series_writes_a_seg(tmp_path: Path) -> None:
    """The real spleen bundle configs with random weights, on a crop of the series (kept small for CPU)."""
    from monai.bundle import ConfigParser

    started = time.perf_counter()
    bundle = tmp_path / "bundles" / "spleen_ct_segmentation"
    shutil.copytree(BUNDLE, bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True)
    (bundle / "models").mkdir()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    folder = _crop(_copy_series(tmp_path / "full"), tmp_path / "case" / "ct", slice(200, 264), slice(300, 364))
    settings = Settings(
        imaging=ImagingSettings(bundles=[bundle], roi_size=[48, 48, 32], sw_batch_size=4, overlap=0.25, device="cpu")
    )
    (evidence,), out = _run(SEGMENT, SegmentArgs(attachment="ct"), folder, tmp_path, settings)
    png, mask, seg = evidence.artifacts
    assert seg == "artifacts/segment_spleen_ct_segmentation_ct_seg.dcm"
    assert SEGMENT.checked(evidence) == evidence
    assert evidence.payload["dicom_seg"].startswith(
        "DICOM SEG written: segment_spleen_ct_segmentation_ct_seg.dcm, 1 segments"
    )
    written = np.asarray(nib.load(str(out / mask)).dataobj)
    assert written.shape == (64, 64, 20) and 0 < (written == 1).sum() < written.size  # some voxels, not all
    compared = _check_seg_against_nifti(out / seg, out / mask, folder, {1: "spleen"})
    assert compared == 20 * 64 * 64
    (segment,) = pydicom.dcmread(out / seg).SegmentSequence
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"  # SNOMED CT: spleen
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # anatomical structure
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "MONAI bundle spleen_ct_segmentation"
    print(f"bundle SEG {(out / seg).stat().st_size} bytes, {compared} voxels, {time.perf_counter() - started:.1f} s")


@pytest.mark.parametrize("name", ["pancreas_tumour", "kidney_left"])
def test_bundle_labels_without_a_snomed_name_are_still_coded(name: str) -> None:
    from medagent.tools.dicomseg import structure_code

    code = structure_code(name)
    assert code.label == name
    if "tumour" in name:
        assert (code.category.meaning, code.type.value) == ("Morphologically Abnormal Structure", "108369006")
    else:
        assert code.type.scheme_designator == "99MEDAGENT" and code.type.meaning == name
