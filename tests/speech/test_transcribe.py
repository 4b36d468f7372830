"""speech.transcribe with the default runtime: packaged Whisper base on faster-whisper, on committed recordings."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from medagent.specialists.speech.load import PACKAGED_SHA256, assemble_packaged_base, packaged_model_dir
from medagent.tools.config import Settings, SpeechSettings
from medagent.tools.contracts import Attachment, AttachmentKind, Case, Measurement, Phenotypes
from medagent.tools.errors import CaseError
from medagent.tools.registry import Registry, ToolContext
from medagent.tools.speech import TOOLS, TranscribeArgs, transcribe_attachment

TOOL = TOOLS[0]


def _run(settings: Settings, folder: Path, name: str, **arguments: object) -> tuple[object, float]:
    case = Case(id="dictation", attachments=[Attachment(id="audio1", kind=AttachmentKind.audio, path=name)])
    ctx = ToolContext(case=case, case_dir=folder, artifacts_dir=folder / "out", settings=settings)
    [evidence] = transcribe_attachment(TranscribeArgs(attachment="audio1", **arguments), ctx)
    return evidence, soundfile.info(str(folder / name)).duration


def _check_segments(payload: dict, duration: float) -> None:
    assert payload["segments"], "no segments"
    previous = 0.0
    for segment in payload["segments"]:
        assert previous - 0.01 <= segment["start"] <= segment["end"] <= duration + 0.01
        assert 0.0 < segment["confidence"] <= 1.0
        assert segment["text"]
        previous = segment["start"]
    assert payload["transcript"] == " ".join(s["text"] for s in payload["segments"])


def test_default_model_is_available_and_assembled_with_checksums(settings: Settings) -> None:
    spec = Registry(settings, TOOLS).specs()[0]
    assert spec.available, spec.unavailable_reason
    folder = assemble_packaged_base(settings.cache_root)
    assert folder == packaged_model_dir(settings.cache_root)
    listed = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert listed == PACKAGED_SHA256
    assert (folder / "model.bin").stat().st_size > 140_000_000


def test_damaged_assembly_is_rebuilt(tmp_path: Path) -> None:
    folder = packaged_model_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"half a model")
    (folder / "SHA256SUMS").write_text("stale\n")
    rebuilt = assemble_packaged_base(tmp_path)
    assert (rebuilt / "model.bin").stat().st_size > 140_000_000
    assert "d01c3014" in (rebuilt / "SHA256SUMS").read_text()
    shutil.rmtree(tmp_path / "speech")


def test_dictated_history_is_transcribed_with_time_spans(settings: Settings, audio_dir: Path) -> None:
    evidence, duration = _run(settings, audio_dir, "chest_pain.wav")
    payload = evidence.payload
    text = payload["transcript"].lower()
    for words in ("chest pain", "left arm", "no fever", "man"):
        assert words in text, f"'{words}' missing from {payload['transcript']!r}"
    assert "62" in text or "sixty" in text
    assert payload["language"] == "en" and payload["runtime"] == "faster-whisper"
    _check_segments(payload, duration)
    # the summary quotes the words and the time span they cover
    assert "chest pain" in evidence.summary.lower() and "audio1" in evidence.summary
    assert f"{payload['segments'][0]['start']:.1f} s–" in evidence.summary
    assert not evidence.error and 0.3 < evidence.confidence <= 1.0


def test_flac_stereo_44k_recording(settings: Settings, audio_dir: Path, tmp_path: Path) -> None:
    from scipy.signal import resample_poly

    mono, rate = soundfile.read(audio_dir / "dyspnoea.flac", dtype="float32")
    stereo = np.stack([resample_poly(mono, 441, 160)] * 2, axis=1)
    soundfile.write(tmp_path / "dyspnoea_44k_stereo.flac", stereo, 44_100)
    evidence, duration = _run(settings, tmp_path, "dyspnoea_44k_stereo.flac")
    assert "shortness of breath" in evidence.payload["transcript"].lower()
    _check_segments(evidence.payload, duration)


def test_long_recording_keeps_times_past_30_seconds(settings: Settings, audio_dir: Path, tmp_path: Path) -> None:
    first = soundfile.read(audio_dir / "chest_pain.wav", dtype="float32")[0]
    second = soundfile.read(audio_dir / "dyspnoea.flac", dtype="float32")[0]
    gap = np.zeros(27 * 16_000, dtype=np.float32)
    soundfile.write(tmp_path / "long.wav", np.concatenate([first, gap, second]), 16_000)
    offset = (len(first) + len(gap)) / 16_000

    evidence, duration = _run(settings, tmp_path, "long.wav", word_timestamps=True)
    payload = evidence.payload
    _check_segments(payload, duration)
    late = [s for s in payload["segments"] if "breath" in s["text"].lower()]
    assert late and late[0]["start"] >= offset - 0.5, payload["segments"]
    assert "chest pain" in payload["transcript"].lower()
    words = [w for s in payload["segments"] for w in s["words"]]
    breath = next(w for w in words if "breath" in w["text"].lower())
    assert offset < breath["start"] < duration


def test_silent_recording_says_no_speech(settings: Settings, tmp_path: Path) -> None:
    soundfile.write(tmp_path / "silence.wav", np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    evidence, _ = _run(settings, tmp_path, "silence.wav")
    assert not evidence.error
    assert evidence.payload["transcript"] == "" and evidence.payload["segments"] == []
    assert "No speech" in evidence.summary and "silent" in evidence.summary


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"this is a text note, not audio" * 10, "not a readable audio file")],
)
def test_bad_files_give_a_clear_error(settings: Settings, tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.wav").write_bytes(content)
    with pytest.raises(CaseError, match=f"attachment 'audio1': .*bad.wav: .*{message}"):
        _run(settings, tmp_path, "bad.wav")


def test_noise_music_and_pauses_are_not_decoded_and_speech_keeps_its_times(
    settings: Settings, audio_dir: Path, tmp_path: Path
) -> None:
    """Speech, white noise, a chord-and-melody 'music' stretch, digital silence, speech, quiet noise: with the
    default voice-activity detection only the two spoken stretches are decoded, at the times they were spoken."""
    rate, rng = 16_000, np.random.default_rng(0)
    first = soundfile.read(audio_dir / "chest_pain.wav", dtype="float32")[0]
    second = soundfile.read(audio_dir / "interview_no_pain.flac", dtype="float32")[0]
    t = np.arange(12 * rate) / rate
    chord = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (220, 277, 330, 440))
    melody = 0.3 * np.sin(2 * np.pi * np.repeat(rng.choice([262, 294, 330, 392, 440, 523], 30), int(0.4 * rate))[: len(t)] * t)
    parts = [first, 0.1 * rng.standard_normal(12 * rate), chord + melody, np.zeros(8 * rate), second,
             0.03 * rng.standard_normal(10 * rate)]  # fmt: skip
    starts = np.cumsum([0] + [len(p) for p in parts]) / rate
    soundfile.write(tmp_path / "mixed.wav", np.concatenate(parts).astype(np.float32), rate)
    assert settings.speech.vad  # the default

    evidence, duration = _run(settings, tmp_path, "mixed.wav")
    payload = evidence.payload
    _check_segments(payload, duration)
    spoken = [(starts[0], starts[1]), (starts[4], starts[5])]
    for segment in payload["segments"]:  # every segment lies in a spoken stretch (0.5 s of padding allowed)
        assert any(a - 0.5 <= segment["start"] and segment["end"] <= b + 0.5 for a, b in spoken), payload["segments"]
    assert "chest pain" in payload["transcript"].lower() and "cough" in payload["transcript"].lower()
    late = next(s for s in payload["segments"] if "cough" in s["text"].lower())
    assert late["start"] >= starts[4] - 0.5  # not at the 30 s window edge, where it lies without VAD
    assert payload["non_speech_s"] >= 0.8 * (duration - (starts[1] - starts[0]) - (starts[5] - starts[4]))
    assert any("judged not speech" in note for note in payload["notes"])


def test_the_vocabulary_prompt_takes_the_case_words_but_never_the_history(
    audio_dir: Path, spoken: dict[str, str], tmp_path: Path
) -> None:
    """The recording dictates the typed history word for word: the prompt holds the findings' names, the coded
    phenotypes' labels and the question, and not one word of the history that the configured prompt lacks."""
    # the run-wide cache root, whose knowledge graph labels the coded phenotypes; case words are off by default
    settings = Settings(speech=SpeechSettings(case_context=True))
    shutil.copy(audio_dir / "chest_pain.wav", tmp_path / "dictation.wav")
    history = spoken["chest_pain.wav"]
    case = Case(
        id="dictated", history=history, question="Is this an acute coronary syndrome?",
        findings=[Measurement(name="troponin I", value=2.1, unit="ng/mL")],
        phenotypes=Phenotypes(present=["HP:0002094"]),
        attachments=[Attachment(id="audio1", kind=AttachmentKind.audio, path="dictation.wav")],
    )  # fmt: skip
    ctx = ToolContext(case=case, case_dir=tmp_path, artifacts_dir=tmp_path / "out", settings=settings)
    [evidence] = transcribe_attachment(TranscribeArgs(attachment="audio1"), ctx)
    prompt = evidence.payload["prompt"]
    assert prompt.startswith(settings.speech.initial_prompt)
    added = prompt[len(settings.speech.initial_prompt):]
    assert "troponin I" in added and "Dyspnea" in added and "acute coronary syndrome" in added
    words = lambda text: set(re.findall(r"[a-z]+", text.lower()))  # noqa: E731
    assert not (words(history) - words(settings.speech.initial_prompt)) & words(added), added
    assert "crushing chest pain" in evidence.payload["transcript"].lower()
    [plain] = transcribe_attachment(TranscribeArgs(attachment="audio1"), ToolContext(
        case=case, case_dir=tmp_path, artifacts_dir=tmp_path / "out2", settings=Settings()))  # fmt: skip
    assert plain.payload["prompt"] == settings.speech.initial_prompt
