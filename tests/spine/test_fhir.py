"""FHIR R4 in and out: examples/fhir_bundle.json (written for these tests: a lab panel, HPO-coded observations and
conditions, a plain-text note, a NIfTI CT shipped beside it) converts, solves end to end and comes back as a Bundle
that fhir.resources validates and that carries the result's content."""

from __future__ import annotations

import base64
import copy
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "examples" / "fhir_bundle.json"
IDENTIFYING = ("Example", "12345", "Exampletown", "1965-06-02", "p1")


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "data").mkdir(parents=True)
    shutil.copyfile(BUNDLE, folder / "bundle.json")
    shutil.copyfile(REPO / "examples" / "data" / "ct_small.nii.gz", folder / "data" / "ct_small.nii.gz")
    return folder


def test_convert_keeps_age_sex_findings_phenotypes_and_the_ct_and_drops_identifiers(run_cli, bundle_dir, tmp_path):
    out = tmp_path / "case"
    done = run_cli("convert", "fhir", str(bundle_dir / "bundle.json"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "identifier, name, address, birthDate dropped" in done.stderr
    case = json.loads((out / "case.json").read_text())
    assert case["patient"] == {"sex": "male", "age_years": 61.0}  # born 1965-06-02, seen 2026-11-20
    assert [(f["name"], f["value"], f.get("unit")) for f in case["findings"]] == [
        ("haemoglobin", 10.2, "g/dL"), ("platelets", 95.0, "10^9/L"), ("heart rate", 92.0, "/min")]  # fmt: skip
    assert case["findings"][0]["reference_range"] == "13.5-17.5 g/dL"
    assert case["phenotypes"] == {"present": ["HP:0001744", "HP:0030166"], "excluded": ["HP:0001945"]}
    assert "Hypertension" in case["history"] and "left upper quadrant" in case["history"]
    (ct,) = case["attachments"]
    assert (ct["kind"], ct["modality"]) == ("volume", "CT")
    assert (out / ct["path"]).read_bytes() == (bundle_dir / "data" / "ct_small.nii.gz").read_bytes()
    text = (out / "case.json").read_text()
    assert not [word for word in IDENTIFYING if word in text]
    again = run_cli("convert", "fhir", str(bundle_dir / "bundle.json"), "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr


def test_solve_reads_the_bundle_and_writes_a_valid_fhir_result_that_round_trips(run_cli, bundle_dir, tmp_path):
    from fhir.resources.R4B.bundle import Bundle

    config = tmp_path / "medagent.toml"
    config.write_text('[agent]\nplanner = "rule"\n', encoding="utf-8")
    out = tmp_path / "out"
    done = run_cli("solve", str(bundle_dir / "bundle.json"), "-o", str(out), "--fhir", "--config", str(config))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert {e["tool"] for e in result["evidence"]} >= {"imaging.ct_quant", "knowledge.rank"}
    assert any(e["attachment"] == "media1" for e in result["evidence"])
    assert not [word for word in IDENTIFYING if word in (out / "input" / "case.json").read_text()]

    bundle = Bundle.model_validate_json((out / "fhir.json").read_text())  # valid FHIR R4 (R4B models)
    resources = {f"{e.resource.get_resource_type()}/{e.resource.id}": e.resource for e in bundle.entry}
    report = resources["DiagnosticReport/report"]
    assert report.conclusion == " ".join(s["text"] for s in result["report"]["sentences"])
    raw_report = next(e["resource"] for e in json.loads((out / "fhir.json").read_text())["entry"] if e["resource"]["id"] == "report")
    assert "Research use only" in base64.b64decode(raw_report["presentedForm"][0]["data"]).decode()
    for evidence in result["evidence"]:
        observation = resources[f"Observation/{evidence['id']}"]
        assert (observation.code.text, observation.valueString) == (evidence["tool"], evidence["summary"])
    conditions = [r for r in resources.values() if r.get_resource_type() == "Condition"]
    assert [c.code.text for c in conditions] == [d["name"] for d in result["differential"]]
    systems = {"http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM", "https://www.omim.org": "OMIM", "http://www.orpha.net": "ORPHA"}
    for condition, candidate in zip(conditions, result["differential"], strict=True):
        assert condition.verificationStatus.coding[0].code == "provisional"
        assert sorted((systems.get(c.system, c.system), c.code) for c in condition.code.coding or []) == sorted(
            (c["system"], c["id"]) for c in candidate["codes"])
        cited = [ref.reference for item in condition.evidence or [] for ref in item.detail or []]
        assert cited == [f"Observation/{e}" for e in candidate["evidence"]]
        assert all(ref in resources for ref in cited)
    assert result["differential"] and any(d["codes"] for d in result["differential"])
    findings = [r for key, r in resources.items() if key.startswith("Observation/finding-")]
    assert [(f.code.text, float(f.valueQuantity.value)) for f in findings] == [("haemoglobin", 10.2), ("platelets", 95.0), ("heart rate", 92.0)]


def _entry(bundle: dict, resource_id: str) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == resource_id)


def _media(bundle: dict, **content: object) -> dict:
    _entry(bundle, "m1")["content"] = {"contentType": "application/x-nifti", **content}
    return bundle


BAD = [
    (lambda b: {**b, "resourceType": "Patient"}, "not a FHIR Bundle"),
    (lambda b: (b["entry"].append({"resource": {"resourceType": "DeviceUsage", "id": "x", "status": "active"}}), b)[1],
     "'DeviceUsage' is not FHIR R4"),
    (lambda b: (_entry(b, "lab-hb").pop("status"), b)[1], "not a valid FHIR R4 Bundle: entry.1.resource.status"),
    (lambda b: _media(b, url="https://example.org/ct.nii.gz"), "is absolute"),
    (lambda b: _media(b, url="/etc/passwd"), "is absolute"),
    (lambda b: _media(b, url="../outside.nii.gz"), "leads outside the bundle's folder"),
    (lambda b: _media(b, url="data/missing.nii.gz"), "does not ship"),
    (lambda b: _media(b, data="not base64!!"), "Invalid base64"),
]


@pytest.mark.parametrize(("change", "words"), BAD)
def test_bad_bundles_get_one_line_exit_2_and_nothing_written(run_cli, bundle_dir, tmp_path, change, words):
    (bundle_dir.parent / "outside.nii.gz").write_bytes(b"x")
    raw = change(copy.deepcopy(json.loads(BUNDLE.read_text())))
    (bundle_dir / "bundle.json").write_text(json.dumps(raw))
    commands = [["convert", "fhir", str(bundle_dir / "bundle.json"), "-o", str(tmp_path / "case")]]
    if words in ("not a FHIR Bundle", "is absolute"):  # solve reads bundles through the same code: two cases suffice
        commands.append(["solve", str(bundle_dir / "bundle.json"), "-o", str(tmp_path / "out")])
    for command in commands:
        done = run_cli(*command)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "case").exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "outside.nii.gz"]


def test_a_unit_that_cannot_be_converted_is_kept_as_text_and_said(run_cli, bundle_dir, tmp_path):
    raw = json.loads(BUNDLE.read_text())
    quantity = _entry(raw, "lab-hb")["valueQuantity"]
    quantity.update({"value": 6.3, "unit": "mmol/L", "code": "mmol/L"})
    (bundle_dir / "bundle.json").write_text(json.dumps(raw))
    done = run_cli("convert", "fhir", str(bundle_dir / "bundle.json"), "-o", str(tmp_path / "case"))
    assert done.returncode == 0, done.stderr
    assert "unit 'mmol/L' for haemoglobin cannot be converted; kept as text" in done.stderr
    haemoglobin = json.loads((tmp_path / "case" / "case.json").read_text())["findings"][0]
    assert haemoglobin == {"name": "haemoglobin", "value": "6.3 mmol/L", "reference_range": "13.5-17.5 g/dL"}
