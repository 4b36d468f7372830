"""A note in lay words, British spelling, index-style qualifiers and a typo still links to the right HPO terms.

The sentences are written for this test (not taken from the evaluation data); the dictionary linker over the
full graph, no dense retrieval, so each link comes from HPO's own forms and the linker's word handling.
"""

from __future__ import annotations

from medagent.specialists.knowledge import form_key, split_mentions


def _ids(linker, text: str) -> tuple[set[str], set[str]]:  # noqa: ANN001
    present, excluded = split_mentions(linker.link(text), linker.graph)
    return {m.id for m in present}, {m.id for m in excluded}


def test_a_parents_account_in_lay_words(linker):
    """HPO's layperson synonyms: "flat feet", "knock knees", "lazy eye", "bow legs", and a denied "squint"."""
    text = ("Her mother noticed flat feet, knock knees and a lazy eye when she was three; "
            "the school nurse found bow legs but no squint.")  # fmt: skip
    present, excluded = _ids(linker, text)
    assert present == {"HP:0001763", "HP:0002857", "HP:0000646", "HP:0002979"}  # pes planus, genu valgum, ...
    assert excluded == {"HP:0000486"}  # strabismus


def test_wordings_no_hpo_form_spells_out(linker):
    """Each phrase below is in no dictionary form, yet names one term: a qualifier after a comma, a word family
    ("thickening"/"thick"), two modifiers sharing a head, British "-oea", and a letter-swap typo."""
    cases = {
        "Intellectual disability, profound": "HP:0002187",  # Profound intellectual disability
        "thickening of the corpus callosum": "HP:0007074",  # Thick corpus callosum
        "sparse or thin eyebrows": "HP:0045075",  # Sparse eyebrow (and "thin eyebrows": Thin eyebrow)
        "hypertelorsim": "HP:0000316",  # Hypertelorism
        "microcephally": "HP:0000252",  # Microcephaly
    }
    for phrase in cases:
        assert form_key(phrase) not in linker.dictionary, phrase
    present, excluded = _ids(linker, "On examination: " + "; ".join(cases) + "; no dyspnoea.")
    assert set(cases.values()) <= present and not present - set(cases.values()) - {"HP:0045074"}, present
    assert excluded == {"HP:0002094"}  # Dyspnea


def test_a_list_is_not_read_as_a_qualified_finding(linker):
    """ "tremor, ataxia" lists two findings (a term after the comma is not a qualifier), and a qualifier that
    runs on into the next finding ("intellectual disability, profound hypotonia") stays with it."""
    mentions = linker.link("Tremor, ataxia. Intellectual disability, profound hypotonia.")
    assert [(m.text, m.label) for m in mentions] == [
        ("Tremor", "Tremor"), ("ataxia", "Ataxia"), ("Intellectual disability", "Intellectual disability"),
        ("hypotonia", "Hypotonia")]  # fmt: skip
