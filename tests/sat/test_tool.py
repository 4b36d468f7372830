"""imaging.segment_text: target and modality refusals, availability without weights, the rule planner's proposals,
and `medagent solve` end to end on the committed DICOM series with a tiny SAT at the real 288x288x96 window."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from medagent.tools.config import SATSettings, Settings
from medagent.tools.contracts import Case, ToolCall
from medagent.tools.errors import ToolError
from medagent.tools.registry import Registry
from medagent.tools.sat import LAYOUT_NOTE, NAME, TOOLS, doctor, named_terms, resolve_targets, vocabulary

ROOT = Path(__file__).resolve().parents[2]
SERIES = ROOT / "examples" / "data" / "ct_dicom"  # the series examples/ct_dicom_case.json attaches
TOOL = TOOLS[0]


def _case(modality: str, question: str = "Segment it.") -> Case:
    return Case.model_validate({
        "id": "c", "question": question,
        "attachments": [{"id": "scan", "kind": "volume", "path": "scan.nii.gz", "modality": modality}],
    })  # fmt: skip


def test_an_unknown_target_is_refused_with_the_nearest_known_names():
    with pytest.raises(ToolError) as caught:
        resolve_targets(["livr", "spleen"], "CT")
    assert "'livr' is not one of SAT's 498 classes" in str(caught.value) and "liver" in str(caught.value)


def test_an_mr_with_a_ct_only_class_is_refused_with_the_reason():
    ct_only = next(t for t in vocabulary().terms() if vocabulary().modalities_of(t) == ["ct"])
    with pytest.raises(ToolError, match="not trained to segment it on MRI scans"):
        resolve_targets([ct_only], "MR")
    assert [c.term for c in resolve_targets(["Liver", "gall bladder"], "MR")] == ["liver", "gallbladder"]


def test_refusals_reach_the_planner_before_the_tool_runs(tiny_dir):
    registry = Registry(Settings(sat=SATSettings(path=tiny_dir, device="cpu")), tools=TOOLS)
    assert registry.unavailable_reason(NAME) is None
    call = ToolCall(call_id="C1", tool=NAME, arguments={"attachment": "scan", "targets": ["livr"]})
    args, reason = registry.validate(call, _case("CT"))
    assert args is None and "nearest CT classes" in reason
    ok, reason = registry.validate(call.model_copy(update={"arguments": {"attachment": "scan", "targets": ["liver"]}}),
                                   _case("CT"))  # fmt: skip
    assert reason is None and ok.targets == ["liver"]


def test_unavailable_without_weights_and_doctor_says_where_to_put_them(tmp_path):
    reason = Registry(Settings(), tools=TOOLS).unavailable_reason(NAME)
    assert "no SAT weights configured" in reason and "zzh99/SAT" in reason and "[sat] path" in reason
    empty = Settings(sat=SATSettings(path=tmp_path))
    assert "lacks the SAT network checkpoint" in Registry(empty, tools=TOOLS).unavailable_reason(NAME)
    lines = doctor(empty)
    assert any(LAYOUT_NOTE in line for line in lines) and any("BioLORD-2023-C" in line for line in lines)
    assert lines[-1].startswith("sat: unavailable:")


def test_the_rule_planner_finds_structures_the_question_names():
    assert named_terms("Is the left kidney or the spleen enlarged? Any gall bladder stones?", "CT") == [
        "left kidney", "spleen", "gallbladder",
    ]  # fmt: skip
    assert named_terms("Describe the CT examination.", "CT") == []


def test_solve_segments_the_named_organs_of_the_dicom_series_end_to_end(tmp_path, tiny_dir):
    shutil.copytree(SERIES, tmp_path / "ct_dicom")
    case = tmp_path / "case.json"
    case.write_text(json.dumps({
        "id": "sat-ct", "question": "What are the volumes of the liver and the spleen on this CT?",
        "attachments": [{"id": "ct", "kind": "volume", "path": "ct_dicom", "modality": "CT"}],
    }))  # fmt: skip
    config = tmp_path / "medagent.toml"
    config.write_text(
        f'cache_dir = "{tmp_path / "cache"}"\n[agent]\nplanner = "rule"\n[knowledge]\nenabled = false\n'
        f'[sat]\npath = "{tiny_dir}"\ndevice = "cpu"\nwindow = [288, 288, 96]\n'
    )
    out = tmp_path / "out"
    from typer.testing import CliRunner

    from medagent.cli.main import app

    started = time.perf_counter()
    done = CliRunner().invoke(app, ["solve", str(case), "-o", str(out), "--config", str(config)])
    seconds = time.perf_counter() - started
    assert done.exit_code == 0, done.output
    assert seconds <= 120, f"solve took {seconds:.0f} s"
    result = json.loads((out / "result.json").read_text())
    items = {e["payload"]["term"]: e for e in result["evidence"] if e["tool"] == NAME}
    assert set(items) == {"liver", "spleen"} and not any(e["error"] for e in items.values())
    report = (out / "report.md").read_text()
    for term, item in items.items():
        payload = item["payload"]
        assert payload["window"] == [288, 288, 96] and payload["padded"] and payload["processed_spacing_mm"] == [1, 1, 3]
        assert f"{payload['volume_ml']:.1f} mL ({payload['voxels']} voxels)" in item["summary"]
        assert "zero-padded" in item["summary"] and "no DICOM SEG written" in payload["dicom_seg"]
        assert (out / payload["mask"]).is_file() and item["id"] in report
        for artifact in item["artifacts"]:
            assert (out / artifact).is_file()
        assert {"artifacts/sat_ct.png", "artifacts/sat_ct_labels.nii.gz"} <= set(item["artifacts"])
    import nibabel as nib

    labels = nib.load(str(out / "artifacts/sat_ct_labels.nii.gz"))
    assert labels.shape == (512, 512, 20)
    calls = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    planned = [c for c in calls if c["event"] == "tool_call" and c.get("tool") == NAME]
    assert len(planned) == 1 and planned[0]["origin"] == "rule" and not planned[0]["rejected"]
