"""The graph built from hpo3, hp.obo and ICD-10-CM: what a user looks up must be there."""

from __future__ import annotations

import time

from medagent.specialists.knowledge.graph import load_graph


def test_graph_holds_hpo_diseases_and_icd(graph):
    assert len(graph.term_ids) > 19000
    assert sum(d.startswith("OMIM:") for d in graph.disease_ids) > 8000
    assert sum(d.startswith("ORPHA:") for d in graph.disease_ids) > 4000
    seizure = graph.resolve("HP:0001250")
    assert graph.labels[seizure] == "Seizure"
    assert "Epileptic seizure" in [s[0] for s in graph.synonyms[seizure]]
    assert graph.definitions[seizure]
    # IC rises from the root to specific terms.
    assert graph.ic[graph.resolve("HP:0000118")] < graph.ic[seizure] < graph.ic[graph.resolve("HP:0011097")]
    assert graph.icd_for_term(graph.resolve("HP:0001903")) == "D64.9"  # Anemia -> "Anemia, unspecified"
    assert graph.release["hp.obo"] == "2025-01-16"


def test_release_mismatch_is_reported_and_alt_ids_resolve(graph):
    report = graph.build_report
    assert report["hpo3_terms_without_obo_entry"] >= 0 and "obo_terms_not_in_hpo3" in report
    assert report["annotations_with_frequency"] < report["annotations"]
    alias, target = next(iter(graph.alias.items()))
    assert graph.resolve(alias) == target
    assert graph.resolve("HP:9999999") is None


def test_disease_annotations_carry_frequencies(graph):
    marfan = graph.disease_index["OMIM:154700"]
    assert graph.disease_names[marfan] == "Marfan syndrome"
    labels = {graph.labels[i] for i in graph.annotations[marfan]}
    assert "Ectopia lentis" in labels
    assert graph.annotation_freq[marfan].max() <= 1.0


def test_cached_graph_loads_fast(knowledge_cache, graph):
    started = time.perf_counter()
    again = load_graph(knowledge_cache)
    assert time.perf_counter() - started < 10  # the benchmark holds the 2 s target; CI machines are shared
    assert again.term_ids == graph.term_ids
