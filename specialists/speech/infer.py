"""Transcribe a recording of any length with one Runtime: window by window, silence skipped, times kept.

Windows come from the bounded-memory reader (audio.py). The language is detected once, on the first
window that holds speech, then fixed so a long dictation does not flip languages mid-way. Each window
is prompted with the medical vocabulary prompt plus the end of the text so far, the way Whisper
conditions on previous text inside one file.

With `vad`, Silero voice-activity detection (faster-whisper's bundled model and its own
`get_speech_timestamps`, for either engine) gates each window: one with no speech in it (noise, music,
a long pause) is never decoded, so Whisper cannot invent words there; faster-whisper then decodes only
the speech inside the windows that remain and maps the times back.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from medagent.specialists.speech.audio import SAMPLE_RATE, AudioError, AudioStream, frame_loudness_dbfs, iter_windows
from medagent.specialists.speech.model import DecodeOptions, Runtime, Segment, Transcript, Word

PROMPT_TAIL_CHARS = 200  # Whisper's prompt holds at most half its 448-token context; keep the tail short


def _prompt(initial: str | None, previous: list[Segment]) -> str | None:
    tail = " ".join(s.text.strip() for s in previous)[-PROMPT_TAIL_CHARS:].strip()
    parts = [p for p in (initial, tail) if p]
    return " ".join(parts) or None


def _shift(segment: Segment, offset: float, limit: float) -> Segment:
    # Whisper may place the last timestamp a little past the audio it heard: clamp to the window.
    start = min(max(0.0, segment.start) + offset, limit)
    end = min(max(segment.end + offset, start), limit)
    words = None
    if segment.words is not None:
        words = [
            Word(min(w.start + offset, limit), min(max(w.end, w.start) + offset, limit), w.text, w.probability)
            for w in segment.words
        ]
    return Segment(round(start, 2), round(end, 2), segment.text.strip(), segment.confidence, words,
                   segment.avg_logprob, segment.no_speech_prob)


def _speech_seconds(samples) -> float:  # noqa: ANN001 - float32 16 kHz samples
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    chunks = get_speech_timestamps(samples, VadOptions(), sampling_rate=SAMPLE_RATE)
    return sum(c["end"] - c["start"] for c in chunks) / SAMPLE_RATE


def transcribe(
    runtime: Runtime,
    path: Path,
    options: DecodeOptions | None = None,
    window_s: float = 30.0,
    silence_dbfs: float = -50.0,
    max_seconds: float | None = None,
) -> Transcript:
    """Transcribe `path`; silent windows (loudest 20 ms below `silence_dbfs`) are skipped, not decoded."""
    options = options or DecodeOptions()
    stream = AudioStream(path)
    if max_seconds is not None and stream.facts.seconds > max_seconds:
        raise AudioError(
            f"{path}: {stream.facts.seconds / 60:.0f} min of audio exceeds the limit of {max_seconds / 60:.0f} min"
        )
    started = time.perf_counter()
    segments: list[Segment] = []
    language, language_probability = options.language, None
    silent_s, non_speech_s, loudest = 0.0, 0.0, -200.0
    for window in iter_windows(stream, window_s=window_s):
        level = float(frame_loudness_dbfs(window.samples).max())
        loudest = max(loudest, level)
        if level < silence_dbfs:
            silent_s += len(window.samples) / SAMPLE_RATE
            continue
        if options.vad:
            seconds = len(window.samples) / SAMPLE_RATE
            speech = _speech_seconds(window.samples)
            non_speech_s += seconds - speech
            if speech == 0.0:
                continue
        result = runtime.transcribe_window(
            window.samples, replace(options, language=language), _prompt(options.initial_prompt, segments)
        )
        if language is None and result.language:
            language, language_probability = result.language, result.language_probability
        segments.extend(_shift(s, window.start_s, window.end_s) for s in result.segments if s.text.strip())
    duration = stream.samples_read / SAMPLE_RATE
    notes = []
    if stream.truncated:
        notes.append(
            f"the file ends after {duration:.1f} s although its header announces "
            f"{stream.facts.seconds:.1f} s (truncated)"
        )
    if duration and silent_s >= duration - 1e-6:
        notes.append(f"no speech: the recording is silent (loudest 20 ms at {loudest:.0f} dBFS)")
    elif not segments:
        notes.append("no speech was recognised" + (" (the voice-activity detector heard none)" if options.vad else ""))
    if non_speech_s >= 1.0 and segments:
        notes.append(f"{non_speech_s:.0f} s judged not speech by the voice-activity detector (not decoded)")
    return Transcript(
        text=" ".join(s.text for s in segments),
        segments=segments,
        language=language,
        language_probability=language_probability,
        duration_s=round(duration, 3),
        elapsed_s=time.perf_counter() - started,
        runtime=runtime.name,
        model=runtime.model,
        silent_s=round(silent_s, 3),
        non_speech_s=round(non_speech_s, 3),
        truncated=stream.truncated,
        notes=notes,
    )
