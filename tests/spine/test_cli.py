"""`medagent solve` end to end through the installed command, and every bad input the spine promises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from pydicom.data import get_testdata_file

from medagent.cli.schemas import json_schema
from medagent.tools.trace import read_trace


def write_case(folder: Path, attachments: list[dict], **fields) -> Path:
    case = {"id": "t1", "history": "Cough for two weeks.", "attachments": attachments, **fields}
    path = folder / "case.json"
    path.write_text(json.dumps(case))
    return path


def test_solve_writes_valid_result_report_and_trace(run_cli, examples, tmp_path):
    out = tmp_path / "out"
    done = run_cli("solve", str(examples / "multimodal_case.json"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "imaging.describe" in done.stderr  # progress shown while tools run
    result = json.loads((out / "result.json").read_text())
    jsonschema.validate(result, json_schema("result"))
    trace_schema = json_schema("trace")
    events = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    for event in events:
        jsonschema.validate(event, trace_schema)
    assert [e["event"] for e in events][0] == "case_loaded" and [e["event"] for e in events][-2:] == ["result", "models"]
    # What the run loaded, with a memory estimate each (the knowledge graph at least: the history is linked).
    models = events[-1]
    assert any(entry["key"].startswith("knowledge.graph") for entry in models["loaded"]) and models["shared"] is False
    assert models["total_bytes"] == sum(entry["bytes"] or 0 for entry in models["loaded"]) > 0
    # Each attachment was described, with evidence ids in recording order.
    described = {e["attachment"]: e for e in result["evidence"] if e["tool"] == "imaging.describe"}
    assert set(described) >= {"ct", "ct_nifti", "mr"}
    assert [e["id"] for e in result["evidence"]] == [f"E{i}" for i in range(1, len(result["evidence"]) + 1)]
    assert described["ct"]["payload"]["shape"] == [512, 512, 20]
    assert described["ct"]["payload"]["units"] == "HU"
    assert described["mr"]["payload"]["modality"] == "MR"
    # Every citation in the report resolves to a row of its evidence table.
    report = (out / "report.md").read_text()
    assert "Research use only" in report
    for evidence_id in {c for s in result["report"]["sentences"] for c in s["citations"]}:
        assert f"| {evidence_id} |" in report
    # The trace alone tells which call produced which evidence.
    calls = {e["call_id"]: e for e in events if e["event"] == "tool_call"}
    for event in (e for e in events if e["event"] == "tool_result"):
        assert calls[event["call_id"]]["origin"] in {"rule", "guard", "llm", "repair"}
        assert event["finished"] >= event["started"]


def test_json_flag_prints_the_result(run_cli, examples, tmp_path):
    done = run_cli("solve", str(examples / "ct_nifti_case.json"), "-o", str(tmp_path / "o"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["case_id"] == "example-ct-nifti"
    ct = next(e for e in result["evidence"] if e["tool"] == "imaging.describe")
    assert ct["payload"]["spacing_mm"] == [3.0, 3.0, 3.0]
    assert -1100 < ct["payload"]["intensity"]["p1"] < -500  # air/lung in Hounsfield units


def _assert_refused(done, tmp_path: Path, fragment: str, out: Path | None = None):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert fragment in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: "{not json", "not valid JSON (line 1"),
        (lambda d: {**d, "attachments": [{"id": "a", "kind": "xray", "path": "data/ct_small.nii.gz"}]}, "attachments.0.kind"),
        (lambda d: {k: v for k, v in d.items() if k != "id"}, "id: Field required"),
        (lambda d: {**d, "patient": {"age_years": "old"}}, "patient.age_years"),
        (lambda d: {**d, "attachments": [{"id": "a", "kind": "volume", "path": "data/missing.nii.gz"}]}, "file not found"),
        (lambda d: {**d, "attachments": [{"id": "a", "kind": "volume", "path": "../outside.nii.gz"}]}, "leads outside the case folder"),
        (lambda d: {**d, "attachments": [{"id": "a", "kind": "audio", "path": "data/ct_small.nii.gz"}]}, "declared kind 'audio' but the file is nifti"),
        (lambda d: {**d, "phenotypes": {"present": ["fever"]}}, "'fever' is not an ontology id"),
    ],
)
def test_bad_cases_are_refused_in_one_line(run_cli, case_dir, tmp_path, mutate, fragment):
    (case_dir.parent / "outside.nii.gz").write_bytes((case_dir / "data" / "ct_small.nii.gz").read_bytes())
    base = {"id": "t1", "history": "x", "attachments": []}
    value = mutate(base)
    path = case_dir / "case.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    out = tmp_path / "out"
    _assert_refused(run_cli("solve", str(path), "-o", str(out)), tmp_path, fragment, out)


def test_outside_paths_allowed_on_request(run_cli, case_dir, tmp_path):
    shutil.copy(case_dir / "data" / "ct_small.nii.gz", case_dir.parent / "outside.nii.gz")
    path = write_case(case_dir, [{"id": "a", "kind": "volume", "path": "../outside.nii.gz", "modality": "CT"}])
    done = run_cli("solve", str(path), "-o", str(tmp_path / "o"), "--allow-outside-paths")
    assert done.returncode == 0, done.stderr


def test_corrupt_volumes_and_dicom_folders(run_cli, case_dir, tmp_path):
    data = case_dir / "data"
    truncated = data / "truncated.nii.gz"
    truncated.write_bytes((data / "ct_small.nii.gz").read_bytes()[:5000])
    (data / "empty").mkdir()
    broken = data / "broken_dicom"
    shutil.copytree(data / "ct_dicom", broken)
    first = sorted(broken.iterdir())[0]
    first.write_bytes(first.read_bytes()[:2000])
    two = data / "two_series"
    two.mkdir()
    shutil.copy(sorted((data / "ct_dicom").iterdir())[0], two / "a.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), two / "b.dcm")
    cases = [
        ("data/truncated.nii.gz", "unreadable NIfTI"),
        ("data/empty", "folder holds no DICOM files"),
        ("data/broken_dicom", "broken_dicom"),
        ("data/two_series", "holds 2 DICOM series"),
    ]
    for relative, fragment in cases:
        path = write_case(case_dir, [{"id": "a", "kind": "volume", "path": relative}])
        out = tmp_path / "out"
        _assert_refused(run_cli("solve", str(path), "-o", str(out)), tmp_path, fragment, out)
    # The listing tells the user how to pick one series, and picking one works.
    done = run_cli("solve", str(path), "-o", str(tmp_path / "out"))
    assert "series_uid" in done.stderr
    import pydicom

    uid = str(pydicom.dcmread(two / "b.dcm", stop_before_pixels=True).SeriesInstanceUID)
    path = write_case(case_dir, [{"id": "a", "kind": "volume", "path": "data/two_series", "series_uid": uid}])
    assert run_cli("solve", str(path), "-o", str(tmp_path / "picked")).returncode == 0


def test_existing_output_folder_needs_overwrite(run_cli, examples, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # A folder medagent did not write is never replaced, with or without --overwrite.
    for flags in ([], ["--overwrite"]):
        done = run_cli("solve", str(examples / "mr_nifti_case.json"), "-o", str(out), *flags)
        assert done.returncode == 2 and "was not written by medagent" in done.stderr
        assert (out / "keep.txt").read_text() == "mine"
    # One it wrote needs --overwrite, and is then replaced.
    ours = tmp_path / "ours"
    assert run_cli("solve", str(examples / "mr_nifti_case.json"), "-o", str(ours)).returncode == 0
    done = run_cli("solve", str(examples / "mr_nifti_case.json"), "-o", str(ours))
    assert done.returncode == 2 and "--overwrite" in done.stderr
    done = run_cli("solve", str(examples / "mr_nifti_case.json"), "-o", str(ours), "--overwrite")
    assert done.returncode == 0 and (ours / "result.json").exists() and (ours / ".medagent-output").exists()


def test_no_patient_identifiers_in_any_output(run_cli, tmp_path):
    import pydicom

    source = get_testdata_file("CT_small.dcm")
    name = str(pydicom.dcmread(source).PatientName)
    patient_id = str(pydicom.dcmread(source).PatientID)
    folder = tmp_path / "case"
    folder.mkdir()
    shutil.copy(source, folder / "slice.dcm")
    path = write_case(folder, [{"id": "s", "kind": "image", "path": "slice.dcm"}])
    out = tmp_path / "out"
    done = run_cli("solve", str(path), "-o", str(out))
    assert done.returncode == 0, done.stderr
    for file in out.rglob("*"):
        if file.is_file():
            content = file.read_bytes()
            assert name.encode() not in content and patient_id.encode() not in content, file
    assert name not in done.stdout + done.stderr


def test_bad_input_fails_before_torch_is_imported(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "case.json"
    path.write_text('{"id": "x", "attachments": [{"id": "a", "kind": "volume", "path": "nope.nii"}]}')
    code = (
        "import sys\nfrom medagent.cli import main\nsys.argv=['medagent','solve',%r]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules, 'langgraph' in sys.modules)\n" % str(path)
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr


def test_schemas_and_tools_commands(run_cli):
    for name in ("case", "result", "trace", "evidence", "toolspec", "config", "suite-item"):
        done = run_cli("schema", name)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)
    assert run_cli("schema", "nope").returncode == 2
    listing = json.loads(run_cli("tools", "--json").stdout)
    describe = next(t for t in listing if t["name"] == "imaging.describe")
    assert describe["available"] and "attachment" in describe["arguments"]["properties"]


def test_doctor_reports_packages_and_tools(run_cli):
    done = run_cli("doctor")
    assert "imaging.describe" in done.stdout and "cache root" in done.stdout, done.stdout + done.stderr
    # What a run would load and its size on disk, and that this process holds none of it.
    assert "model memory" in done.stdout and "no model is loaded in this process" in done.stdout
    assert "knowledge graph (pickle):" in done.stdout and "together" in done.stdout


def test_example_cases_validate_against_the_published_case_schema(examples):
    schema = json_schema("case")
    for path in examples.glob("*_case.json"):
        jsonschema.validate(json.loads(path.read_text()), schema)


def test_trace_round_trips(run_cli, examples, tmp_path):
    out = tmp_path / "o"
    assert run_cli("solve", str(examples / "ct_nifti_case.json"), "-o", str(out)).returncode == 0
    events = read_trace(out / "trace.jsonl")
    assert all(e.case_id == "example-ct-nifti" for e in events)
    assert [e.t for e in events] == sorted(e.t for e in events)
