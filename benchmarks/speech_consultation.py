"""A long two-speaker consultation with noise, music and pauses, transcribed with medagent's speech defaults.

Builds `--minutes` of audio (default 30) from AgentClinic histories (`--data`, or ../shared/data): a doctor
(espeak-ng en-us) asks, the patient (en-us, female variant) answers with the sentences of one case's history;
between cases come long pauses and, every few minutes, 20 s of "music" (a chord and a melody) or 15 s of
white noise. It is transcribed through the same code as `speech.transcribe` with the `[speech]` defaults
(beam 5, Silero VAD, the vocabulary prompt) and prints: RTF, corpus WER over what was spoken, words placed
in the noise and music stretches (invented words), whether the times stay in order and inside the recording,
the seconds the VAD judged not speech against the seconds inserted, and peak memory.

Who spoke when is not attempted: no diarisation model is packaged on PyPI (pyannote's pipelines need their
weights from the Hugging Face hub), and the transcript says nothing about speakers.

Run by hand (needs espeak-ng and sox: `make speech-tools`):
`python benchmarks/speech_consultation.py [--minutes 30] [--out runs/consultation]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import soundfile

from medagent.evals.speech import agentclinic_file, spoken_history, synthesise, word_errors
from medagent.specialists.speech.audio import read_audio
from medagent.specialists.speech.infer import transcribe
from medagent.specialists.speech.load import load_runtime
from medagent.specialists.speech.model import DecodeOptions
from medagent.tools.config import SpeechSettings, cache_root

RATE = 16_000
QUESTIONS = ["What brings you in today?", "Tell me more about that.", "Anything else I should know?"]


def _music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    chord = sum(0.12 * np.sin(2 * np.pi * f * t) for f in (196, 247, 294, 392))
    notes = np.repeat(rng.choice([262, 294, 330, 349, 392, 440, 494, 523], int(seconds / 0.4) + 1), int(0.4 * RATE))
    return (chord + 0.25 * np.sin(2 * np.pi * notes[: len(t)] * t)).astype(np.float32)


def build(minutes: float, data: Path | None, folder: Path) -> tuple[Path, str, list[tuple[float, float, str]]]:
    """The recording, the text spoken in it (in order), and the (start, end, kind) of each non-speech stretch."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    pieces, spoken, gaps = [], [], []
    at = 0.0
    rows = [json.loads(line) for line in agentclinic_file(data).read_text(encoding="utf-8").splitlines()]

    def add(samples: np.ndarray, text: str | None = None, kind: str | None = None) -> None:
        nonlocal at
        pieces.append(samples.astype(np.float32))
        if text:
            spoken.append(text)
        if kind:
            gaps.append((at, at + len(samples) / RATE, kind))
        at += len(samples) / RATE

    for n, row in enumerate(rows):
        if at >= minutes * 60:
            break
        history = spoken_history(row["question"], words=70)
        sentences = [s.strip() + "." for s in history.split(".") if s.strip()]
        for i, sentence in enumerate(sentences):
            if i < len(QUESTIONS):
                question = QUESTIONS[i]
                add(read_audio(synthesise(question, folder / f"q{i}.wav", voice="en-us")), question)
                add(np.zeros(int(0.8 * RATE)))
            add(read_audio(synthesise(sentence, folder / f"{n}-{i}.wav", voice="en-us+f3", speed=150)), sentence)
            add(np.zeros(int(0.8 * RATE)))
        add(np.zeros(int(4 * RATE)), kind="pause")
        if n % 6 == 2:
            add(_music(20, rng), kind="music")
        elif n % 6 == 5:
            add(0.08 * rng.standard_normal(15 * RATE), kind="noise")
    path = folder / "consultation.wav"
    soundfile.write(path, np.concatenate(pieces), RATE)
    return path, " ".join(spoken), gaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--data", type=Path, default=None, help="folder holding agentclinic/dev.jsonl")
    parser.add_argument("--out", type=Path, default=Path("runs/consultation"))
    args = parser.parse_args(argv)
    path, reference, gaps = build(args.minutes, args.data, args.out / "audio")
    speech = SpeechSettings()
    options = DecodeOptions(beam_size=speech.beam_size, vad=speech.vad, initial_prompt=speech.initial_prompt,
                            temperature_fallback=speech.temperature_fallback)  # fmt: skip
    runtime = load_runtime(speech.runtime, cache_root())
    started = time.perf_counter()
    transcript = transcribe(runtime, path, options, window_s=speech.window_s, silence_dbfs=speech.silence_dbfs)
    took = time.perf_counter() - started
    errors, words = word_errors(reference, transcript.text)
    invented = [s for s in transcript.segments for a, b, kind in gaps
                if kind != "pause" and s.start < b - 0.5 and s.end > a + 0.5]  # fmt: skip
    starts = [s.start for s in transcript.segments]
    in_order = starts == sorted(starts) and all(0 <= s.start <= s.end <= transcript.duration_s for s in transcript.segments)
    inserted = sum(b - a for a, b, _ in gaps)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "audio_min": round(transcript.duration_s / 60, 1),
        "settings": f"beam {options.beam_size}, VAD {'on' if options.vad else 'off'}, vocabulary prompt",
        "real_time_factor": round(took / transcript.duration_s, 3),
        "wer": round(errors / max(1, words), 4),
        "reference_words": words,
        "segments": len(transcript.segments),
        "segments_in_music_or_noise": [(s.start, s.end, s.text) for s in invented],
        "times_in_order_and_inside": in_order,
        "non_speech_s_judged": transcript.non_speech_s,
        "non_speech_s_inserted": round(inserted, 1),
        "music_noise_stretches": sum(1 for g in gaps if g[2] != "pause"),
        "peak_rss_mib": round(peak_mib),
        "diarisation": "not done: no packaged diarisation model (pyannote needs hub weights)",
        "notes": transcript.notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transcript.txt").write_text(
        "\n".join(f"[{s.start:8.2f}-{s.end:8.2f}] {s.text}" for s in transcript.segments) + "\n"
    )
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
