"""`imaging.diagnose` as the agent calls it: availability, NIfTI and DICOM through medio, codes, scan limits, bad scans."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medagent.tools.config import RadDiagSettings, Settings
from medagent.tools.contracts import Case, Evidence, ToolCall
from medagent.tools.errors import MedagentError
from medagent.tools.knowledge import TOOLS as knowledge_tools
from medagent.tools.raddiag import TOOLS, fuse_case_scans
from medagent.tools.registry import Registry, ToolContext

TOOL = TOOLS[0]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "data"
LABELS = REPO / "specialists" / "raddiag"


def _codes_by_name() -> dict[str, str]:
    """The authors' name -> code map read straight from the committed file (U+00A0 as a plain space)."""
    raw = json.loads((LABELS / "ICD_dict_1218.json").read_text(encoding="utf-8"))
    return {name.replace("\u00a0", " "): code for name, code in raw.items()}


def _case(folder: Path, attachments: list[dict]) -> Case:
    return Case.model_validate({"id": "rd-1", "history": "", "attachments": attachments})


def _run(case: Case, folder: Path, settings: Settings, arguments: dict):
    registry = Registry(settings, TOOLS)
    args, reason = registry.validate(ToolCall(call_id="c1", tool="imaging.diagnose", arguments=arguments), case)
    assert reason is None, reason
    ctx = ToolContext(case=case, case_dir=folder, artifacts_dir=folder / "out", settings=settings)
    (evidence,) = TOOL.run(args, ctx)
    assert TOOL.checked(evidence) == evidence  # the payload matches DiagnosePayload as written
    return evidence


def test_unavailable_without_weights_and_doctor_says_where_it_looks(tmp_path: Path) -> None:
    reason = TOOL.check(Settings())
    assert "QiaoyuZheng/RadDiag" in reason and "[raddiag] path" in reason and "never downloads" in reason
    assert not Registry(Settings(), TOOLS).available()
    empty = Settings(raddiag=RadDiagSettings(path=tmp_path))
    assert "no RadDiag weights found" in TOOL.check(empty)
    lines = TOOL.doctor(empty)
    assert any(str(tmp_path) in line and "pytorch_model.bin" in line for line in lines)
    assert any("not yet checked against released weights" in line for line in lines)
    assert lines[-1].startswith("raddiag: unavailable")


def test_nifti_and_dicom_scans_give_ranked_disorders_with_their_icd10_codes(tmp_path: Path, early_dir: Path) -> None:
    shutil.copy(EXAMPLES / "ct_small.nii.gz", tmp_path / "ct.nii.gz")
    shutil.copytree(EXAMPLES / "ct_dicom", tmp_path / "dicom")
    case = _case(tmp_path, [
        {"id": "ct", "kind": "volume", "path": "ct.nii.gz", "modality": "CT"},
        {"id": "dcm", "kind": "volume", "path": "dicom", "modality": "CT"},
    ])  # fmt: skip
    settings = Settings(raddiag=RadDiagSettings(path=early_dir, top=7))
    assert [t.name for t in Registry(settings, TOOLS).available()] == ["imaging.diagnose"]
    evidence = _run(case, tmp_path, settings, {"attachment": "ct", "more": ["dcm"]})
    payload = evidence.payload
    slices = nib.load(tmp_path / "ct.nii.gz").shape[2]
    assert [s["attachment"] for s in payload["scans"]] == ["ct", "dcm"]
    assert [s["modality_id"] for s in payload["scans"]] == [1, 2]  # first and second CT plane
    assert payload["scans"][0]["slices_total"] == slices and payload["scans"][0]["slices_used"] == min(slices, 8)
    assert payload["scans"][1]["slices_total"] == len(list((tmp_path / "dicom").iterdir()))
    disorders = payload["disorders"]
    assert len(disorders) == 7 and [d["rank"] for d in disorders] == list(range(1, 8))
    probabilities = [d["probability"] for d in disorders]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 < p < 1 for p in probabilities)
    codes = _codes_by_name()
    assert all(d["icd10"] == codes.get(d["disorder"]) for d in disorders)
    assert payload["icd10_codes"] == list(dict.fromkeys(d["icd10"] for d in disorders if d["icd10"]))
    assert disorders[0]["disorder"] in evidence.summary and disorders[0]["icd10"] in evidence.summary
    assert evidence.confidence == probabilities[0]
    assert [c["name"] for c in payload["differential"]] == [d["disorder"] for d in disorders]
    assert all(c["rationale"].startswith("from imaging") for c in payload["differential"])
    # An LLM planner may look up these codes and names: they are grounded in the evidence.
    recorded = Evidence(**evidence.model_dump(), id="E1", tool="imaging.diagnose", call_id="c1")
    lookup = next(t for t in knowledge_tools if t.name == "knowledge.lookup")
    allowed = lookup.grounded(case, [recorded])["concept"]
    assert set(payload["icd10_codes"]) <= set(allowed) and disorders[0]["disorder"] in allowed
    # One scan alone gives other numbers than the fused pair.
    alone = _run(case, tmp_path, settings, {"attachment": "dcm"})
    assert alone.payload["disorders"] != disorders and alone.payload["scans"][0]["modality_id"] == 1


def test_more_than_four_scans_keeps_the_first_four_by_case_order_and_says_so(tmp_path: Path, late_dir: Path) -> None:
    rng = np.random.default_rng(0)
    attachments = []
    for n in range(5):
        nib.save(nib.Nifti1Image(rng.random((12, 12, 3 + n)).astype(np.float32), np.eye(4)), tmp_path / f"s{n}.nii.gz")
        attachments.append({"id": f"s{n}", "kind": "volume", "path": f"s{n}.nii.gz", "modality": "MR"})
    case = _case(tmp_path, attachments)
    settings = Settings(raddiag=RadDiagSettings(path=late_dir))
    evidence = _run(case, tmp_path, settings, {"attachment": "s4", "more": ["s3", "s2", "s1", "s0"]})
    assert [s["attachment"] for s in evidence.payload["scans"]] == ["s0", "s1", "s2", "s3"]
    assert evidence.payload["left_out"] == ["s4"] and "Left out (more than 4 scans): s4" in evidence.summary
    assert evidence.payload["fusion"] == "late" and "highest probability" in evidence.payload["combined"]
    # The rule planner asks for one call over all of a case's scans.
    (proposal,) = fuse_case_scans(case, Registry(settings, TOOLS).available(), [], [])
    assert proposal[1] == {"attachment": "s0", "more": ["s1", "s2", "s3", "s4"]}


def test_a_scan_without_a_usable_slice_is_one_clear_error(tmp_path: Path, early_dir: Path) -> None:
    nib.save(nib.Nifti1Image(np.full((8, 8, 3), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii.gz")
    case = _case(tmp_path, [{"id": "bad", "kind": "volume", "path": "nan.nii.gz", "modality": "CT"}])
    settings = Settings(raddiag=RadDiagSettings(path=early_dir))
    with pytest.raises(MedagentError, match="no finite voxel"):
        _run(case, tmp_path, settings, {"attachment": "bad"})
    # An ECG picture is not a scan RadDiag examines: the call is refused before it runs.
    case = _case(tmp_path, [{"id": "ecg", "kind": "image", "path": "x.png", "modality": "ECG"}])
    _, reason = Registry(settings, TOOLS).validate(
        ToolCall(call_id="c1", tool="imaging.diagnose", arguments={"attachment": "ecg"}), case
    )
    assert reason == "imaging.diagnose does not examine image ECG attachments"
