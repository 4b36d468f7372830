"""`medagent convert phenopacket`: a phenopacket becomes a valid case.json without its diagnosis."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_convert_phenopacket_keeps_codes_and_drops_the_diagnosis(run_cli, tmp_path):
    source = REPO / "tests" / "knowledge" / "data" / "phenopackets" / "dev.jsonl"
    record = json.loads(source.read_text().splitlines()[0])
    packet = tmp_path / "packet.json"
    packet.write_text(json.dumps(record))
    out = tmp_path / "case.json"
    done = run_cli("convert", "phenopacket", str(packet), "-o", str(out))
    assert done.returncode == 0, done.stderr
    case = json.loads(out.read_text())
    assert case["phenotypes"]["present"] == record["present_hpo"]
    assert case["phenotypes"]["excluded"] == record.get("excluded_hpo", [])
    text = json.dumps(case).lower()
    for label in record.get("diagnosis_labels", []):
        assert label.lower() not in text
    assert run_cli("convert", "phenopacket", str(packet), "-o", str(out)).returncode == 2  # exists
    packet.write_text("{not json")
    refused = run_cli("convert", "phenopacket", str(packet))
    assert refused.returncode == 2 and "not valid JSON" in refused.stderr


def test_convert_reads_ga4gh_v2_through_the_official_schema_and_refuses_what_it_does_not_define(run_cli, tmp_path):
    packet = {
        "id": "PMID_1_proband", "subject": {"id": "proband", "sex": "FEMALE", "timeAtLastEncounter": {"age": {"iso8601duration": "P4Y6M"}}},
        "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}},
                               {"type": {"id": "HP:0001263", "label": "Global developmental delay"}, "excluded": True}],
        "diseases": [{"term": {"id": "OMIM:300672", "label": "Developmental and epileptic encephalopathy 2"}}],
        "metaData": {"created": "2021-05-14T10:35:00Z", "createdBy": "test", "phenopacketSchemaVersion": "2.0"},
    }  # fmt: skip
    source = tmp_path / "packet.json"
    source.write_text(json.dumps(packet))
    done = run_cli("convert", "phenopacket", str(source))
    assert done.returncode == 0, done.stderr
    case = json.loads(done.stdout)
    assert case["patient"] == {"sex": "female", "age_years": 4.5}
    assert case["phenotypes"] == {"present": ["HP:0001250"], "excluded": ["HP:0001263"]}
    assert "encephalopathy" not in done.stdout.lower() and "300672" not in done.stdout  # never the answer
    for broken in ({**packet, "phenotypicFeature": []}, {**packet, "subject": {"id": "p", "sex": "MAN"}}):
        source.write_text(json.dumps(broken))
        refused = run_cli("convert", "phenopacket", str(source))
        assert refused.returncode == 2 and "not a valid phenopacket v2" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
