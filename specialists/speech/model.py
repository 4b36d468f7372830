"""What a speech model is to the rest of medagent: the transcript types and the one Runtime interface.

The Whisper architecture itself is not re-implemented here: the two engines that run it are used as
they are (openai-whisper's `Whisper` module for `.pt` checkpoints, CTranslate2 through faster-whisper).
`tiny_dims` is the random-weight test configuration of the real architecture (same vocabulary, mel bins
and audio context as the published models, tiny widths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Word:
    start: float
    end: float
    text: str
    probability: float


@dataclass
class Segment:
    """A stretch of speech, times in seconds from the start of the recording."""

    start: float
    end: float
    text: str
    confidence: float  # geometric mean of the token probabilities, exp(avg_logprob), in [0, 1]
    words: list[Word] | None = None
    avg_logprob: float | None = None  # Whisper's own figures for the segment, as decoded
    no_speech_prob: float | None = None


@dataclass
class WindowResult:
    segments: list[Segment]
    language: str | None
    language_probability: float | None


@dataclass
class Transcript:
    """A whole recording's transcription."""

    text: str
    segments: list[Segment]
    language: str | None
    language_probability: float | None
    duration_s: float
    elapsed_s: float
    runtime: str
    model: str
    silent_s: float = 0.0  # audio skipped as silence (never sent to the model)
    non_speech_s: float = 0.0  # audio the VAD judged not speech (noise, music, pauses): not decoded
    truncated: bool = False  # the file ended before its header said it would
    notes: list[str] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        return self.elapsed_s / self.duration_s if self.duration_s else 0.0


@dataclass
class DecodeOptions:
    language: str | None = None  # None: detect from the first window that holds speech
    initial_prompt: str | None = None
    beam_size: int = 1
    word_timestamps: bool = False
    temperature_fallback: bool = True  # retry hotter when a decode repeats itself or is improbable
    without_timestamps: bool = False  # one segment per window, no time tokens decoded (faster; coarser times)
    max_tokens: int | None = None  # cap on text tokens decoded per window (None: the model's limit, 224)
    # Silero voice-activity detection (the model faster-whisper ships): windows with no speech are not decoded,
    # and faster-whisper decodes only the speech inside a window (times mapped back to the recording).
    vad: bool = False


class Runtime(Protocol):
    """One Whisper engine with its model loaded: transcribes ≤ 30 s of 16 kHz mono audio at a time."""

    name: str  # "faster-whisper" | "openai-whisper"
    model: str  # what was loaded (package/version or file)

    def transcribe_window(self, audio: np.ndarray, options: DecodeOptions, prompt: str | None) -> WindowResult: ...


def temperatures(options: DecodeOptions) -> tuple[float, ...]:
    # Both engines' documented default fallback schedule; greedy only when fallback is off.
    return (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if options.temperature_fallback else (0.0,)


def tiny_dims(n_vocab: int = 51865) -> dict[str, int]:
    """openai-whisper ModelDimensions of a tiny random test model: real vocabulary, mels and contexts."""
    return {
        "n_mels": 80,
        "n_audio_ctx": 1500,
        "n_audio_state": 64,
        "n_audio_head": 2,
        "n_audio_layer": 2,
        "n_vocab": n_vocab,
        "n_text_ctx": 448,
        "n_text_state": 64,
        "n_text_head": 2,
        "n_text_layer": 2,
    }
