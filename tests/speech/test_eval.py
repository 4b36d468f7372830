"""The speech suite's scoring (normalised WER) and its refusal to run without espeak-ng/sox."""

from __future__ import annotations

from pathlib import Path

import pytest

from medagent.evals.speech import missing_tools, normalise, require_tools, spoken_history, wer


def test_wer_ignores_case_punctuation_hyphens_and_number_spelling() -> None:
    reference = "Sixty two year old man with crushing chest pain radiating to the left arm. No fever."
    assert wer(reference, "62-year-old man with crushing chest pain radiating to the left arm, no fever") == 0.0
    assert normalise("One hundred and five bpm, 38.5°C") == ["105", "bpm", "38", "point", "5", "degrees", "celsius"]
    # two substitutions ("rate heading" for "radiating" = 1 substitution + 1 insertion) out of 15 words
    assert wer(
        reference, "62-year-old man with crushing chest pain rate heading to the left arm. No fever."
    ) == pytest.approx(2 / 15)


def test_missing_espeak_and_sox_are_named_with_their_packages(tmp_path: Path) -> None:
    assert missing_tools(str(tmp_path)) == ["espeak-ng", "sox"]
    with pytest.raises(RuntimeError, match="missing: espeak-ng, sox.*apt-get install -y espeak-ng sox"):
        require_tools(str(tmp_path))


def test_spoken_history_is_the_opening_of_an_agentclinic_case() -> None:
    question = (
        "PATIENT:\nDemographics: 8-month-old boy\nHistory: The patient has been very fussy for days.\n"
        "Symptoms:\n  Primary Symptom: Crying, especially with abdominal palpation\nTEST RESULTS:\n  WBC: Normal\n"
    )
    text = spoken_history(question)
    assert text.startswith("8-month-old boy. The patient has been very fussy")
    assert "Crying" in text and "WBC" not in text
