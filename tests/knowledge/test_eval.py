"""The phenopackets suite on committed cases: conversion to case.json and the printed comparison."""

from __future__ import annotations

import json
from pathlib import Path

from medagent.evals.knowledge import build_items, convert_phenopacket, evaluate, format_report, paraphrase
from medagent.tools.contracts import Case

DATA = Path(__file__).resolve().parent / "data"


def _records():
    return [json.loads(line) for line in (DATA / "phenopackets" / "dev.jsonl").read_text().splitlines()]


def test_convert_phenopacket_keeps_codes_and_narrative_not_the_answer():
    record = _records()[0]
    case = Case.model_validate(convert_phenopacket(record))
    assert case.phenotypes.present == record["present_hpo"]
    assert case.history == record["narrative"]
    assert record["diagnosis_ids"][0] not in json.dumps(convert_phenopacket(record))
    ga4gh = {"id": "P1", "subject": {"sex": "FEMALE", "timeAtLastEncounter": {"age": {"iso8601duration": "P3Y6M"}}},
             "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}},
                                    {"type": {"id": "HP:0001945", "label": "Fever"}, "excluded": True}]}  # fmt: skip
    case = Case.model_validate(convert_phenopacket(ga4gh))
    assert case.phenotypes.excluded == ["HP:0001945"] and case.patient.age_years == 3.5
    assert "seizure" in case.history


def test_paraphrase_replaces_labels_with_held_out_synonyms(graph):
    from medagent.specialists.knowledge.load import load_linker
    from medagent.tools.config import cache_root

    linker = load_linker(cache_root(), holdout_share=0.5, dense=False)
    changed = 0
    for record in _records():
        text, mentions, exact = paraphrase(record, graph, linker)
        assert mentions >= 1 and exact <= mentions
        changed += text != record["narrative"]
    assert changed >= len(_records()) // 2


def test_evaluation_prints_variants_beside_the_baseline(graph, knowledge_cache):
    report = evaluate(DATA, "dev_report_sample_ids.txt", cache_dir=knowledge_cache, dense=False)
    assert set(report["variants"]) == {"ids", "narrative", "paraphrased", "baseline"}
    ids = report["variants"]["ids"]
    assert ids["n"] == 12 and ids["top10"] >= 0.5  # published cases whose diseases HPO annotates
    text = format_report(report)
    assert "baseline" in text and "paraphrased" in text and "still match a dictionary entry" in text
    items = build_items(DATA, limit=2)
    assert [i["meta"]["variant"] for i in items] == ["ids", "narrative", "paraphrased"] * 2
    assert items[1]["steps"][1]["arguments"]["present"] == "$prev.present_ids"
