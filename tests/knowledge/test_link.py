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
    text = "The child had repeated epileptic fits over the last week."
    mentions = linker.link(text)
    assert any(m.method == "dense" and graph.is_ancestor(graph.resolve("HP:0001250"), graph.resolve(m.id))
               for m in mentions), mentions  # fmt: skip
