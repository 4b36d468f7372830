"""Real-time factor of speech transcription (default: packaged Whisper base on faster-whisper, int8, CPU).

Builds a dictation of `--minutes` from the committed example recordings (speech with natural pauses),
transcribes it through the same code path as `speech.transcribe` (windowed reader, silence skip,
prompt), and prints the real-time factor (processing seconds / audio seconds) beside the target 0.25,
with the machine it ran on. Run by hand: `python benchmarks/speech_rtf.py [--minutes 2] [--beam-size 1] [--no-vad]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from medagent.specialists.speech.audio import read_audio
from medagent.specialists.speech.infer import transcribe
from medagent.specialists.speech.load import load_runtime
from medagent.specialists.speech.model import DecodeOptions
from medagent.tools.config import MEDICAL_PROMPT, SpeechSettings, cache_root

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "audio"
TARGET_RTF = 0.25


def dictation(minutes: float, out: Path, source: Path | None = None) -> Path:
    """Recordings in a loop, separated by 0.6 s pauses, to `minutes` of 16 kHz audio.

    `source`: a folder of WAV files (e.g. the speech suite's synthesised histories, which do not repeat);
    default: the two committed example dictations. Repeated text trips Whisper's compression-ratio
    check and its temperature retries, so varied audio gives the realistic figure.
    """
    files = sorted(source.glob("*.wav")) if source else [EXAMPLES / "chest_pain.wav", EXAMPLES / "dyspnoea.flac"]
    sentences = [read_audio(path) for path in files]
    pause = np.zeros(int(0.6 * 16_000), dtype=np.float32)
    pieces, total, i = [], 0, 0
    while total < minutes * 60 * 16_000:
        pieces += [sentences[i % len(sentences)], pause]
        total += len(sentences[i % len(sentences)]) + len(pause)
        i += 1
    soundfile.write(out, np.concatenate(pieces), 16_000, subtype="PCM_16")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--beam-size", type=int, default=SpeechSettings().beam_size)
    parser.add_argument("--threads", type=int, default=0, help="faster-whisper CPU threads (0 = its default)")
    parser.add_argument("--runtime", default="faster-whisper")
    parser.add_argument("--audio", type=Path, default=None, help="folder of WAVs to build the dictation from")
    parser.add_argument("--no-fallback", action="store_true", help="greedy only, no temperature retries")
    parser.add_argument("--no-vad", action="store_true", help="leave out voice-activity detection (on by default)")
    parser.add_argument(
        "--model", type=Path, default=None, help="CT2 folder or openai-whisper .pt; default: packaged base"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        audio = dictation(args.minutes, Path(folder) / "dictation.wav", args.audio)
        started = time.perf_counter()
        runtime = load_runtime(
            args.runtime, cache_root(), device="cpu", cpu_threads=args.threads,
            ct2_dir=args.model if args.runtime == "faster-whisper" else None,
            checkpoint=args.model if args.runtime == "openai-whisper" else None,
        )  # fmt: skip
        load_s = time.perf_counter() - started
        options = DecodeOptions(
            beam_size=args.beam_size, initial_prompt=MEDICAL_PROMPT, temperature_fallback=not args.no_fallback,
            vad=not args.no_vad,
        )
        transcript = transcribe(runtime, audio, options)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(load, 2),
        "runtime": runtime.name,
        "model": runtime.model,
        "beam_size": args.beam_size,
        "temperature_fallback": not args.no_fallback,
        "vad": not args.no_vad,
        "audio_source": str(args.audio or "examples/audio"),
        "audio_s": transcript.duration_s,
        "load_s": round(load_s, 2),
        "transcribe_s": round(transcript.elapsed_s, 2),
        "real_time_factor": round(transcript.real_time_factor, 3),
        "target": TARGET_RTF,
        "ratio_to_target": round(transcript.real_time_factor / TARGET_RTF, 2),
        "segments": len(transcript.segments),
    }
    print(json.dumps(result, indent=1))
    verdict = "meets" if result["ratio_to_target"] <= 1 else "misses"
    print(
        f"RTF {result['real_time_factor']} ({verdict} the {TARGET_RTF} target, {result['ratio_to_target']}× of it) "
        f"on {result['cpus']} CPUs, load average {result['load_average_1min']}"
    )


if __name__ == "__main__":
    main()
