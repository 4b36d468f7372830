"""Ranking: real phenotypes find the right disease, every candidate explains itself, bad input is named."""

from __future__ import annotations

import pytest

from medagent.specialists.knowledge.graph import KnowledgeError
from medagent.specialists.knowledge.rank import rank

MARFAN = ["HP:0001166", "HP:0001083", "HP:0002616", "HP:0001519"]  # arachnodactyly, ectopia lentis, aortic root dilatation, tall stature  # noqa: E501


def test_marfan_features_rank_marfan_first_with_evidence(graph):
    candidates = rank(graph, MARFAN, sources=("OMIM",))
    assert candidates[0].disease_id == "OMIM:154700", [c.name for c in candidates[:5]]
    assert candidates[0].score > candidates[5].score
    explained = {m.term for m in candidates[0].matches if m.contribution > 0}
    assert {"HP:0001166", "HP:0001083"} <= explained
    assert all(m.kind in {"exact", "more specific in disease", "shared ancestor"} for m in candidates[0].matches)


def test_excluded_typical_feature_lowers_a_disease(graph):
    base = {c.disease_id: c.score for c in rank(graph, MARFAN, top=50, sources=("OMIM",))}
    # Ectopia lentis excluded: it can only cost Marfan syndrome, never help it.
    with_excluded = rank(graph, MARFAN[:1] + MARFAN[2:], ["HP:0001083"], top=50, sources=("OMIM",))
    scores = {c.disease_id: c.score for c in with_excluded}
    assert scores.get("OMIM:154700", -1e9) < base["OMIM:154700"]


def test_unknown_and_contradictory_terms_are_named(graph):
    with pytest.raises(KnowledgeError, match="HP:9999999"):
        rank(graph, ["HP:0001250", "HP:9999999"])
    with pytest.raises(KnowledgeError, match="contradictory"):
        rank(graph, ["HP:0001250"], ["HP:0001250"])
    with pytest.raises(KnowledgeError, match="contradictory"):  # "no nervous system abnormality" yet seizures
        rank(graph, ["HP:0001250"], ["HP:0000707"])
    with pytest.raises(KnowledgeError, match="no present"):
        rank(graph, [], ["HP:0001250"])
