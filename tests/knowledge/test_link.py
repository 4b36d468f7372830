"""Entity linking: exact and synonym matching, spans, negation, bad input; dense retrieval on a small branch."""

from __future__ import annotations

import pytest

from medagent.specialists.knowledge.graph import KnowledgeError
from medagent.specialists.knowledge.link import held_out, split_mentions


def test_links_terms_with_spans_and_negation(linker):
    text = ("A 28-year-old man presents with reduced visual acuity, seizures and an enlarged liver; "
            "no undetectable electroretinogram. He denies chest pain. Fever was absent.")  # fmt: skip
    present, excluded = split_mentions(linker.link(text))
    assert [m.id for m in present] == ["HP:0007663", "HP:0001250", "HP:0002240"]
    assert {m.id for m in excluded} == {"HP:0000550", "HP:0100749", "HP:0001945"}
    for mention in present + excluded:
        assert text[mention.span[0] : mention.span[1]] == mention.text
    liver = next(m for m in present if m.id == "HP:0002240")
    assert liver.text == "enlarged liver" and liver.method == "synonym"


def test_negation_stops_at_the_clause(linker):
    present, excluded = split_mentions(linker.link("No fever, but seizures since infancy."))
    assert [m.label for m in excluded] == ["Fever"]
    assert [m.label for m in present] == ["Seizure"]


def test_bad_text_is_a_clear_error(linker):
    with pytest.raises(KnowledgeError, match="empty"):
        linker.link("   ")
    with pytest.raises(KnowledgeError, match="English"):
        linker.link("Der Patient leidet seit Jahren unter starken Krampfanfällen und Fieber")


def test_held_out_synonyms_leave_the_dictionary(graph):
    from medagent.specialists.knowledge.link import Linker, form_key

    kept = Linker(graph, holdout_share=0.5)
    seizure = graph.resolve("HP:0001250")
    for text, _scope, kind in graph.synonyms[seizure]:
        if held_out("HP:0001250", text, 0.5) and kind != "obsolete_synonym":
            assert kept.dictionary.get(form_key(text), (None,))[0] != seizure
    assert held_out("HP:0001250", "Epileptic seizure", 0.5) == held_out("HP:0001250", "epileptic seizures", 0.5)


def test_dense_retrieval_links_a_paraphrase(graph, knowledge_cache):
    """The real MiniLM embedder over a small branch (seizures, fever, liver): a wording no dictionary holds."""
    from medagent.specialists.knowledge.load import load_linker

    branch = [i for i in range(len(graph.term_ids))
              if any(graph.is_ancestor(graph.resolve(r), i) for r in ("HP:0001250", "HP:0001945", "HP:0002240"))]  # fmt: skip
    linker = load_linker(knowledge_cache, dense=True, terms=branch, dense_threshold=0.6)
    text = "The child had repeated epileptic fits over the last week. Examination showed nothing else."
    mentions = linker.link(text)
    assert any(m.method == "dense" and graph.is_ancestor(graph.resolve("HP:0001250"), graph.resolve(m.id))
               for m in mentions), mentions  # fmt: skip
    assert not any("Examination" in m.text for m in mentions)  # the narrative's frame is not a phenotype
    # A second pass reads the phrase embeddings from the cache and links exactly the same mentions.
    assert [m.as_dict() for m in linker.link(text)] == [m.as_dict() for m in mentions]
    assert any("epileptic fits" in phrase for phrase in linker._vectors)


def test_dense_retrieval_keeps_the_direction_of_a_wording(graph, knowledge_cache):
    """MiniLM puts "increased width of the forehead" nearest "Narrow forehead"; the linker takes a neighbour
    whose wording points the same way (forehead branch, the evaluation's held-out share)."""
    from medagent.specialists.knowledge.link import polarity
    from medagent.specialists.knowledge.load import load_linker

    assert polarity("Increased width of the forehead") == 1 and polarity("Narrow forehead") == -1
    assert polarity("Forehead shape") == 0
    root = graph.resolve("HP:0000290")  # Abnormality of the forehead
    branch = [i for i in range(len(graph.term_ids)) if graph.is_ancestor(root, i)]
    linker = load_linker(knowledge_cache, dense=True, terms=branch, holdout_share=0.5)
    mentions = linker.link("Her forehead shows increased width.")
    assert [m.method for m in mentions] == ["dense"], mentions
    assert polarity(mentions[0].label) != -1 and mentions[0].id != "HP:0000341", mentions  # not Narrow forehead
