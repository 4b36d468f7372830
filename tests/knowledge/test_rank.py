"""Ranking: real phenotypes find the right disease, every candidate explains itself, bad input is named."""

from __future__ import annotations

import numpy as np
import pytest

from medagent.specialists.knowledge.graph import KnowledgeError
from medagent.specialists.knowledge.rank import RankParams, rank, rank_all_scores

MARFAN = ["HP:0001166", "HP:0001083", "HP:0002616", "HP:0001519"]  # arachnodactyly, ectopia lentis, aortic root dilatation, tall stature  # noqa: E501


def test_marfan_features_rank_marfan_first_with_evidence(graph):
    candidates = rank(graph, MARFAN, sources=("OMIM",))
    assert candidates[0].disease_id == "OMIM:154700", [c.name for c in candidates[:5]]
    assert candidates[0].score > candidates[5].score
    explained = {m.term for m in candidates[0].matches if m.contribution > 0}
    assert {"HP:0001166", "HP:0001083"} <= explained
    assert all(m.kind in {"exact", "more specific in disease", "shared ancestor"} for m in candidates[0].matches)


def test_excluded_typical_feature_lowers_a_disease_when_the_penalty_is_on(graph):
    classic = RankParams(gamma=1.0, excluded_from=0.0, pertinent_negative=0.0)
    base = {c.disease_id: c.score for c in rank(graph, MARFAN, top=50, sources=("OMIM",), params=classic)}
    # Ectopia lentis excluded: with the LIRICAL-style penalty it can only cost Marfan syndrome.
    with_excluded = rank(graph, MARFAN[:1] + MARFAN[2:], ["HP:0001083"], top=50, sources=("OMIM",), params=classic)
    scores = {c.disease_id: c.score for c in with_excluded}
    assert scores.get("OMIM:154700", -1e9) < base["OMIM:154700"]
    marfan = next(c for c in with_excluded if c.disease_id == "OMIM:154700")
    assert any(m.kind == "excluded but typical" and m.contribution < 0 for m in marfan.matches)


def test_pertinent_negative_is_opt_in_and_shown_as_evidence(graph):
    """Off by default (an absence must never raise a disease); switched on, it is listed as a pertinent negative."""
    on = rank(graph, MARFAN[:1] + MARFAN[2:], ["HP:0001083"], top=20, sources=("OMIM",),
              params=RankParams(pertinent_negative=25.0))  # fmt: skip
    marfan = next(c for c in on if c.disease_id == "OMIM:154700")
    negative = [m for m in marfan.matches if m.kind == "pertinent negative"]
    assert [m.term for m in negative] == ["HP:0001083"] and negative[0].contribution > 0
    default = rank(graph, MARFAN[:1] + MARFAN[2:], ["HP:0001083"], top=20, sources=("OMIM",))
    assert not any(m.kind == "pertinent negative" for c in default for m in c.matches)
    # With the defaults, stating ectopia lentis absent does not raise Marfan syndrome.
    present_only = {c.disease_id: c.score for c in rank(graph, MARFAN[:1] + MARFAN[2:], top=20, sources=("OMIM",))}
    assert next(c.score for c in default if c.disease_id == "OMIM:154700") <= present_only["OMIM:154700"]


def test_rank_is_vectorised_and_ranks_every_disease(graph):
    """All OMIM diseases get a score in one call; the top of that list is what rank() returns."""
    import numpy as np

    rows, scores = rank_all_scores(graph, MARFAN, [], ("OMIM",))
    assert len(rows) == len(scores) > 5000
    best = graph.disease_ids[int(rows[int(np.argmax(scores))])]
    assert best == rank(graph, MARFAN, top=1, sources=("OMIM",))[0].disease_id == "OMIM:154700"


def test_unknown_and_contradictory_terms_are_named(graph):
    with pytest.raises(KnowledgeError, match="HP:9999999"):
        rank(graph, ["HP:0001250", "HP:9999999"])
    with pytest.raises(KnowledgeError, match="contradictory"):
        rank(graph, ["HP:0001250"], ["HP:0001250"])
    with pytest.raises(KnowledgeError, match="contradictory"):  # "no nervous system abnormality" yet seizures
        rank(graph, ["HP:0001250"], ["HP:0000707"])
    with pytest.raises(KnowledgeError, match="no present"):
        rank(graph, [], ["HP:0001250"])


def test_reverse_coverage_is_the_share_of_the_disease_the_query_explains(graph):
    """Querying with all of a disease's own annotations explains all of it (coverage 1); half of them,
    less; a small disease explained entirely gains on a large one touched here and there."""
    d = graph.disease_index["OMIM:154700"]
    own = [graph.term_ids[t] for t in graph.annotations[d]]
    full = next(c for c in rank(graph, own, top=50, sources=("OMIM",)) if c.disease_id == "OMIM:154700")
    assert full.coverage == pytest.approx(1.0, abs=1e-3)
    part = next(c for c in rank(graph, MARFAN, top=50, sources=("OMIM",)) if c.disease_id == "OMIM:154700")
    assert 0.0 < part.coverage < full.coverage
    without = RankParams(reverse=0.0, delta=0.0)
    plain = next(c for c in rank(graph, MARFAN, top=50, sources=("OMIM",), params=without)
                 if c.disease_id == "OMIM:154700")  # fmt: skip
    # The size term counts the disease's phenotypic features, not its mode of inheritance or onset.
    root = graph.index["HP:0000118"]
    features = sum(graph.is_ancestor(root, t) for t in graph.annotations[d])
    assert features < len(own)
    assert part.score - plain.score == pytest.approx(15.0 * part.coverage + 3.0 * np.log(features), abs=1e-2)


def test_age_and_sex_weigh_onset_and_inheritance_and_are_shown(graph):
    """A child is not yet showing an adult-onset disease, and a woman rarely an X-linked recessive one: each costs the
    disease its RankParams weight, named in its evidence; sex and age unknown, nothing changes."""
    onset_root, mode_root = graph.index["HP:0003674"], graph.index["HP:0000005"]

    def disease_with(term: str, only_mode: bool = False) -> int:
        for d, terms in enumerate(graph.annotations):
            if not graph.disease_ids[d].startswith("OMIM:") or graph.index[term] not in terms:
                continue
            onsets = [t for t in terms if graph.is_ancestor(onset_root, t)]
            modes = [t for t in terms if graph.is_ancestor(mode_root, t)]
            if (term == "HP:0003581" and onsets == [graph.index[term]]) or (only_mode and modes == [graph.index[term]]):
                return d
        raise AssertionError(term)

    params = RankParams()
    for term, patient, weight in (("HP:0003581", {"age_years": 3.0}, params.onset),
                                  ("HP:0001419", {"sex": "female"}, params.x_linked_female)):  # fmt: skip
        d = disease_with(term, only_mode=term == "HP:0001419")
        own = [graph.term_ids[t] for t in graph.annotations[d] if graph.is_ancestor(graph.index["HP:0000118"], t)][:4]
        plain = next(c for c in rank(graph, own, top=20, sources=("OMIM",)) if c.disease_id == graph.disease_ids[d])
        fitted = next(c for c in rank(graph, own, top=40, sources=("OMIM",), **patient)
                      if c.disease_id == graph.disease_ids[d])  # fmt: skip
        assert fitted.score == pytest.approx(plain.score - weight, abs=1e-2)
        assert any(m.term == term and m.contribution == -weight for m in fitted.matches)
        rows, scores = rank_all_scores(graph, own, [], ("OMIM",), **patient)
        k = int(np.flatnonzero(rows == d)[0])
        assert scores[k] == pytest.approx(fitted.score, abs=1e-2)
