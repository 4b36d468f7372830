"""SAT's class vocabulary: synonyms, word order, case, nearest names for an unknown target, the modality filter.

Expected answers are written out by hand from the class list (SAT-DS terminology_list.json), not computed.
"""

from __future__ import annotations

import pytest

from medagent.specialists.sat.vocabulary import (
    SYNONYMS,
    ModalityMismatchError,
    UnknownTargetError,
    VocabularyError,
    load_vocabulary,
    sat_modality,
)


@pytest.fixture(scope="module")
def vocabulary():
    return load_vocabulary()


def test_the_shipped_list_has_the_498_classes(vocabulary) -> None:
    assert len(vocabulary) == 498
    by_modality = {m: sum(c.modality == m for c in vocabulary.classes) for m in ("ct", "mri", "pet")}
    assert by_modality == {"ct": 306, "mri": 189, "pet": 3}
    assert len(vocabulary.terms()) == 451
    assert vocabulary.resolve("liver", "CT").region == "abdomen"


@pytest.mark.parametrize(
    ("asked", "modality", "term"),
    [
        ("left kidney", "CT", "left kidney"),
        ("kidney left", "CT", "left kidney"),
        ("Kidney, Left", "MR", "left kidney"),
        ("  LIVER ", "ct", "liver"),
        ("lobe upper lung left", "CT", "left lung upper lobe"),
        ("gall bladder", "CT", "gallbladder"),
        ("bladder", "MRI T2", "urinary bladder"),
        ("IVC", "CT", "inferior vena cava"),
        ("L1", "CT", "lumbar vertebrae 1 (l1)"),
        ("T12 vertebra", "CT", "thoracic vertebrae 12 (t12)"),
        ("left femoral head", "CT", "head of left femur"),
        ("femoral head left", "CT", "head of left femur"),
        ("liver tumour", "MR", "liver tumor"),
        ("oesophagus", "CT", "esophagus"),
        ("lt kidney", "CT", "left kidney"),
        ("left ventricle", "MR", "left heart ventricle"),
        ("pleural effusion", "CT", "lung effusion"),
        ("tumor", "PT", "tumor"),
        ("brain tumor", "FLAIR", "brain tumor"),
    ],
)
def test_targets_resolve_whatever_their_case_order_or_synonym(vocabulary, asked, modality, term) -> None:
    assert vocabulary.resolve(asked, modality).term == term


def test_every_synonym_points_at_a_sat_term(vocabulary) -> None:
    terms = set(vocabulary.terms())
    assert {target for target in SYNONYMS.values()} <= terms
    assert not set(SYNONYMS) & terms  # a synonym never hides a real class


def test_an_unknown_target_gets_the_nearest_known_names(vocabulary) -> None:
    with pytest.raises(UnknownTargetError) as error:
        vocabulary.resolve("kidny", "CT")
    assert error.value.suggestions[0] == "kidney"
    assert "kidney" in str(error.value) and "not one of SAT's 498 classes" in str(error.value)
    with pytest.raises(UnknownTargetError) as error:
        vocabulary.resolve("pancreatic duct", "CT")
    assert "pancreas" in error.value.suggestions
    with pytest.raises(UnknownTargetError) as error:
        vocabulary.resolve("gall blader", "CT")
    assert "gallbladder" in error.value.suggestions


def test_the_nearest_names_are_those_of_the_scans_modality(vocabulary) -> None:
    with pytest.raises(UnknownTargetError) as error:
        vocabulary.resolve("left hipocampus", "MR")
    assert error.value.suggestions[0] == "left hippocampus"
    with pytest.raises(UnknownTargetError) as error:
        vocabulary.resolve("left rib one", "MR")
    assert not any(s.startswith("left rib") for s in error.value.suggestions)  # ribs are CT classes only


def test_a_class_not_trained_for_the_modality_is_refused_with_the_reason(vocabulary) -> None:
    with pytest.raises(ModalityMismatchError) as error:
        vocabulary.resolve("left rib 1", "MR")
    assert error.value.trained_for == ["ct"]
    assert str(error.value) == (
        "'left rib 1' is a CT class in SAT's vocabulary, not MRI: the model was not trained to segment it on MRI scans"
    )
    with pytest.raises(ModalityMismatchError, match="'brain tumor' is an MRI class .* not CT"):
        vocabulary.resolve("Brain Tumour", "CT")
    with pytest.raises(ModalityMismatchError) as error:
        vocabulary.resolve("liver", "PET")
    assert error.value.trained_for == ["ct", "mri"]


def test_modalities_are_read_as_sat_reads_them() -> None:
    assert [sat_modality(m) for m in ("CT", "MR", "MRI T2", "flair", "DWI", "PT", "PET", "US")] == [
        "ct", "mri", "mri", "mri", "mri", "pet", "pet", "us",
    ]  # fmt: skip
    with pytest.raises(VocabularyError, match="not one SAT knows"):
        sat_modality("X-ray")


def test_ultrasound_has_no_classes(vocabulary) -> None:
    with pytest.raises(ModalityMismatchError, match="not ultrasound"):
        vocabulary.resolve("liver", "US")
