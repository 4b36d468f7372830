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


def test_direction_reads_prefixes_and_spacing_words(graph, knowledge_cache):
    """"Widely spaced eyes" (a held-out synonym of Hypertelorism) lands nearest "Closely spaced eyes"
    (Hypotelorism); Greek and Latin prefixes and spacing words give both wordings their direction."""
    from medagent.specialists.knowledge.link import polarity
    from medagent.specialists.knowledge.load import load_linker

    assert [polarity(t) for t in ("widely spaced eyes", "Closely spaced eyes", "Hypotelorism", "Hepatomegaly",
                                  "Microphthalmia", "Macrocephaly")] == [1, -1, -1, 1, -1, 1]  # fmt: skip
    root = graph.resolve("HP:0100886")  # Abnormality of globe location
    branch = [i for i in range(len(graph.term_ids)) if graph.is_ancestor(root, i)]
    linker = load_linker(knowledge_cache, dense=True, terms=branch, holdout_share=0.5)
    mentions = linker.link("She has widely spaced eyes.")
    assert [m.id for m in mentions] != ["HP:0000601"], mentions  # not Hypotelorism
    assert all(polarity(m.label) != -1 for m in mentions), mentions


def test_an_unsure_dense_link_backs_off_to_what_its_neighbours_share(graph, knowledge_cache):
    """Under the threshold but within `backoff_below`, the close neighbours vote: their most informative
    common ancestor is linked, marked as such, if it is informative enough; with the back-off off, nothing."""
    from medagent.specialists.knowledge.load import load_linker

    branch = [i for i in range(len(graph.term_ids)) if graph.is_ancestor(graph.resolve("HP:0001250"), i)]
    linker = load_linker(knowledge_cache, dense=True, terms=branch, dense_threshold=0.75)
    text = "The child had repeated epileptic fits."
    scores, rows = linker.dense.search(linker._encode(["repeated epileptic fits"]), 8)
    assert 0.65 <= scores[0][0] < 0.75  # in the back-off band for this threshold
    close = {linker.dense.terms[r] for s, r in zip(scores[0], rows[0], strict=True) if s >= scores[0][0] - 0.03}
    assert len(close) > 1  # the neighbours disagree (epileptic spasm, status epilepticus, seizure ...)
    try:
        linker.backoff_min_ic = 0.0
        mentions = linker.link(text)
        assert [(m.method, m.label) for m in mentions] == [("dense (common ancestor)", "Seizure")], mentions
        assert all(graph.is_ancestor(graph.resolve(mentions[0].id), t) for t in close)
        linker.backoff_min_ic = 4.0  # Seizure (IC 1.4) says too little to be linked by a vote
        assert linker.link(text) == []
        linker.backoff_min_ic, linker.backoff_below = 0.0, 0.0
        assert linker.link(text) == []
    finally:
        linker.backoff_min_ic, linker.backoff_below = 4.0, 0.10


def test_word_variants_learnt_from_hpo_link_a_held_out_wording(graph):
    """"Decreased visual acuity" is a held-out synonym of Reduced visual acuity: no dictionary form has
    it, but HPO's own kept forms show "decreased" and "reduced" standing in for each other."""
    from medagent.specialists.knowledge.link import Linker, form_key, spelling

    linker = Linker(graph, holdout_share=0.5)
    acuity = graph.resolve("HP:0007663")
    assert form_key("Decreased visual acuity") not in linker.dictionary
    assert linker.variants.get("reduced", "reduced") == linker.variants.get("decreased", "decreased")
    up, down = (linker.variants.get(w, w) for w in ("increased", "decreased"))
    assert up != down  # opposite directions never join
    mentions = linker.link("Her decreased visual acuity was noted at school.")
    assert [(graph.resolve(m.id), m.method, m.text) for m in mentions] == [
        (acuity, "word variant", "decreased visual acuity")
    ]
    assert [spelling(w) for w in ("oedema", "haemorrhage", "generalised", "tumour", "does")] == [
        "edema", "hemorrhage", "generalized", "tumor", "does"]  # fmt: skip


def test_negation_scope_in_lists_of_findings(linker):
    """A cue that opens its clause denies the whole list; one in the middle of a list of findings only its
    own item; words inside a linked finding ("absent speech") are never cues for the others."""
    _, excluded = split_mentions(linker.link("No fever, seizures or hypotonia."))
    assert {m.label for m in excluded} == {"Fever", "Seizure", "Hypotonia"}
    present, excluded = split_mentions(linker.link("She has ataxia, no fever, seizures and hypotonia."))
    assert [m.label for m in excluded] == ["Fever"]
    assert {m.label for m in present} == {"Ataxia", "Seizure", "Hypotonia"}
    present, excluded = split_mentions(linker.link("Global developmental delay, absent speech, hypotonia."))
    assert not excluded and {m.label for m in present} >= {"Global developmental delay", "Hypotonia"}
    present, _ = split_mentions(linker.link("Normal hearing, seizures."))
    assert [m.label for m in present] == ["Seizure"]


def test_an_excluded_term_that_a_present_one_implies_is_dropped(linker, graph):
    """"No seizures" beside "myoclonic seizures": the text contradicts itself; the affirmed finding stays and
    the denied ancestor goes, so the ranker gets a consistent query instead of an error."""
    from medagent.specialists.knowledge.rank import rank

    mentions = linker.link("No seizures were reported. Myoclonic seizures since infancy; no fever.")
    plain_present, plain_excluded = split_mentions(mentions)
    assert "Seizure" in {m.label for m in plain_excluded}  # without the graph, the clash stays
    present, excluded = split_mentions(mentions, graph)
    assert [m.label for m in present] == ["Myoclonic seizure"] and [m.label for m in excluded] == ["Fever"]
    assert rank(graph, [m.id for m in present], [m.id for m in excluded], top=3)
