"""The speech suite: its scoring (Whisper's normaliser, jiwer), its two rows, and its refusal to run without espeak-ng/sox."""

from __future__ import annotations

from pathlib import Path

import pytest

from medagent.evals.speech import (
    evaluate_model,
    evaluate_plain,
    missing_tools,
    normalise,
    report_table,
    require_tools,
    spoken_history,
    wer,
)


def test_wer_ignores_case_punctuation_hyphens_number_spelling_and_british_spelling() -> None:
    reference = "Sixty two year old man with crushing chest pain radiating to the left arm. No fever."
    assert wer(reference, "62-year-old man with crushing chest pain radiating to the left arm, no fever") == 0.0
    assert wer("Haemoglobin low, anaemia, a paediatric tumour.", "hemoglobin low anemia a pediatric tumor") == 0.0
    assert normalise("One hundred and five bpm") == ["105", "bpm"]
    # espeak-ng speaks what is in parentheses, so those words count (Whisper's normaliser alone would drop them)
    assert normalise("Newborn, 3050-g (6-lb 12-oz) male") == ["newborn", "3050", "g", "6", "lb", "12", "oz", "male"]
    # "rate heading" for "radiating": 1 substitution + 1 insertion, out of 15 words
    assert wer(
        reference, "62-year-old man with crushing chest pain rate heading to the left arm. No fever."
    ) == pytest.approx(2 / 15)
    assert wer("no fever", "") == 1.0


def test_suite_rows_medagent_defaults_beside_plain_faster_whisper_and_no_reference_reaches_the_transcriber(
    audio_dir: Path, spoken: dict[str, str], speech_home: Path
) -> None:
    from medagent.specialists.speech import DecodeOptions, assemble_packaged_base, load_runtime
    from medagent.tools.config import SpeechSettings

    class Listening:
        """The real runtime, keeping every prompt it was handed."""

        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner, self.name, self.model, self.prompts = inner, inner.name, inner.model, []

        def transcribe_window(self, audio, options, prompt):  # noqa: ANN001, ANN201
            self.prompts.append((options.initial_prompt, prompt))
            return self.inner.transcribe_window(audio, options, prompt)

    names = ["chest_pain.wav", "interview_luq_pain.flac", "interview_no_pain.flac"]
    items = [{"id": n, "text": spoken[n], "audio": str(audio_dir / n)} for n in names]
    defaults = SpeechSettings()
    options = DecodeOptions(beam_size=defaults.beam_size, vad=defaults.vad, initial_prompt=defaults.initial_prompt)
    runtime = Listening(load_runtime("faster-whisper", speech_home))
    ours = evaluate_model("whisper-base", runtime, items, options)
    # one window per short recording, each prompted with the configured vocabulary prompt alone
    assert runtime.prompts == [(defaults.initial_prompt, defaults.initial_prompt)] * len(names)
    plain = evaluate_plain("whisper-base", assemble_packaged_base(speech_home), items)
    assert [r["id"] for r in ours["rows"]] == [r["id"] for r in plain["rows"]] == names
    for row in ours["rows"] + plain["rows"]:
        assert row["wer"] == pytest.approx(wer(row["reference"], row["hypothesis"]), abs=1e-4) and row["rtf"] > 0
    assert ours["words"] == plain["words"] == sum(len(normalise(spoken[n])) for n in names)
    assert 0 <= ours["wer"] < 0.3 and 0 <= plain["wer"] < 0.4
    table = report_table([ours, plain])
    assert "| whisper-base | faster-whisper | beam 5, medical prompt, VAD on" in table
    assert "| whisper-base | faster-whisper (plain) | beam 5, no prompt, VAD off" in table


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
