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
