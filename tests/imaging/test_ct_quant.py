"""imaging.ct_quant on the real example CTs (NIfTI and DICOM), and its refusals."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medagent.specialists.imaging.ctquant import dice, quantify
from medagent.tools.config import Settings
from medagent.tools.contracts import Case, ToolCall
from medagent.tools.errors import ToolError
from medagent.tools.imaging import TOOLS
from medagent.tools.intake import load_case
from medagent.tools.registry import AttachmentArgs, Registry, ToolContext

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
REFERENCE = ROOT / "tests" / "data" / "imaging" / "example_seg.nii.gz"
# TotalSegmentator v2 ids of the lung lobes in example_seg.nii.gz (12, right upper lobe, is absent there).
LOBES = (10, 11, 12, 13, 14)
CT_QUANT = next(tool for tool in TOOLS if tool.name == "imaging.ct_quant")


def _context(case_file: str, tmp_path: Path) -> ToolContext:
    loaded = load_case(EXAMPLES / case_file)
    return ToolContext(loaded.case, loaded.case_dir, tmp_path / "out" / "artifacts", Settings())


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_lungs_match_the_totalsegmentator_reference() -> None:
    ct = nib.load(str(EXAMPLES / "data" / "ct_small.nii.gz"))
    reference = np.asarray(nib.load(str(REFERENCE)).dataobj)
    result = quantify(np.asarray(ct.dataobj, dtype=np.float32), tuple(float(z) for z in ct.header.get_zooms()))
    # Lobes merged into lungs; an absent lobe simply adds no voxels to the union.
    reference_lungs = np.isin(reference, LOBES)
    assert dice(result.masks["lungs"], reference_lungs) >= 0.9
    assert result.volumes_ml["lungs"] == pytest.approx(reference_lungs.sum() * 27 / 1000, rel=0.1)
    # Bowel gas lies in the same slices; it must not be counted as lung.
    assert not (result.masks["lungs"] & np.isin(reference, (6, 18, 19, 20))).any()
    assert result.lung_density is not None
    assert -900 < result.lung_density["mean_hu"] < -600
    assert result.lung_density["perc15_hu"] < result.lung_density["mean_hu"]
    assert 0 <= result.lung_density["emphysema_index_pct"] < 5


def test_nifti_case_gets_volumes_density_and_a_picture(tmp_path: Path) -> None:
    ctx = _context("ct_nifti_case.json", tmp_path)
    evidence = CT_QUANT.run(AttachmentArgs(attachment="ct"), ctx)
    volumes, density = evidence
    assert "lungs" in volumes.summary and "mL" in volumes.summary
    assert "emphysema index" in density.summary and "HU" in density.summary
    assert density.payload["lung_density"]["emphysema_index_pct"] >= 0
    png, mask = volumes.artifacts
    assert png == "artifacts/ct_quant_ct.png" and mask == "artifacts/ct_quant_ct_labels.nii.gz"
    out = ctx.artifacts_dir.parent
    width, height = _png_size(out / png)
    assert width > 200 and height > 200
    labels = nib.load(str(out / mask))
    assert labels.shape == (122, 101, 30)
    assert np.allclose(labels.affine, nib.load(str(EXAMPLES / "data" / "ct_small.nii.gz")).affine)
    counts = np.bincount(np.asarray(labels.dataobj).ravel(), minlength=5)
    assert counts[1] * 27 / 1000 == pytest.approx(volumes.payload["volumes_ml"]["lungs"], abs=0.1)
    # A NIfTI has no source instances a DICOM SEG could reference: none is written, and the evidence says why.
    assert volumes.payload["dicom_seg"] == (
        "no DICOM SEG written: the input was not a DICOM series (no source instances to reference)"
    )
    assert not list(out.glob("artifacts/*.dcm"))


def test_dicom_case_is_measured_in_hounsfield_units(tmp_path: Path) -> None:
    ctx = _context("ct_dicom_case.json", tmp_path)
    volumes, lungs = CT_QUANT.run(AttachmentArgs(attachment="ct"), ctx)
    payload = volumes.payload
    assert payload["shape"] == [512, 512, 20]
    assert payload["spacing_mm"][0] == pytest.approx(0.9766, abs=1e-3)
    # An upper-abdominal slab: a body of several litres, fat and bone present.
    assert 3000 < payload["volumes_ml"]["body"] < 20000
    assert payload["volumes_ml"]["fat"] > 100 and payload["volumes_ml"]["bone"] > 10
    assert (ctx.artifacts_dir / "ct_quant_ct.png").is_file()
    # The example series was anonymised with its study and series UIDs blanked: a SEG could not reference it
    # (test_dicom_seg.py restores them in a copy and reads the SEG back).
    assert payload["dicom_seg"] == (
        "no DICOM SEG written: the source instances have no StudyInstanceUID, SeriesInstanceUID "
        "(blanked, e.g. by anonymisation), which a SEG must reference"
    )
    assert volumes.artifacts == ["artifacts/ct_quant_ct.png", "artifacts/ct_quant_ct_labels.nii.gz"]
    # The slab lies below the lungs (TotalSegmentator's segmentation of it has no lung lobe either):
    # its stomach and colon gas must not be reported as lung.
    assert payload["volumes_ml"]["lungs"] == 0
    assert lungs.summary.startswith("No lung tissue found") and lungs.payload["lung_density"] is None
    assert any("bowel/stomach gas" in note for note in payload["limits"])


def test_mr_is_refused_naming_the_modality(tmp_path: Path) -> None:
    ctx = _context("mr_nifti_case.json", tmp_path)
    with pytest.raises(ToolError, match="this volume is MR"):
        CT_QUANT.run(AttachmentArgs(attachment="mr"), ctx)
    call = ToolCall(call_id="C1", tool="imaging.ct_quant", arguments={"attachment": "mr"})
    args, reason = Registry(Settings(), TOOLS).validate(call, ctx.case)
    assert args is None and "MR" in reason


def test_mr_mislabelled_as_ct_is_refused(tmp_path: Path) -> None:
    """NIfTI carries no modality: an MR that a case calls CT must not yield confident tissue volumes."""
    import shutil

    from medagent.tools.intake import resolve_attachments

    shutil.copy(EXAMPLES / "data" / "mr_small.nii.gz", tmp_path / "scan.nii.gz")
    case = Case.model_validate({"id": "x", "attachments": [{"id": "v", "kind": "volume", "path": "scan.nii.gz", "modality": "CT"}]})
    loaded = resolve_attachments(case, tmp_path)
    ctx = ToolContext(loaded.case, tmp_path, tmp_path / "artifacts", Settings())
    with pytest.raises(ToolError, match="no air near -1000 HU"):
        CT_QUANT.run(AttachmentArgs(attachment="v"), ctx)


def test_single_slice_and_missing_geometry_are_refused(tmp_path: Path) -> None:
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    nib.save(nib.Nifti1Image(np.full((64, 64, 1), -1000, dtype=np.int16), np.eye(4)), str(case_dir / "slice.nii.gz"))
    no_geometry = nib.Nifti1Image(np.full((16, 16, 16), -1000, dtype=np.int16), None)
    no_geometry.header.set_qform(None, code=0)
    no_geometry.header.set_sform(None, code=0)
    nib.save(no_geometry, str(case_dir / "bare.nii"))
    case = Case.model_validate(
        {
            "id": "bad",
            "attachments": [
                {"id": "one", "kind": "volume", "path": "slice.nii.gz", "modality": "CT", "format": "nifti"},
                {"id": "bare", "kind": "volume", "path": "bare.nii", "modality": "CT", "format": "nifti"},
            ],
        }
    )
    ctx = ToolContext(case, case_dir, tmp_path / "artifacts", Settings())
    with pytest.raises(ToolError, match="single slice"):
        CT_QUANT.run(AttachmentArgs(attachment="one"), ctx)
    with pytest.raises(ToolError, match="no spatial information"):
        CT_QUANT.run(AttachmentArgs(attachment="bare"), ctx)
