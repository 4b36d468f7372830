"""Speech suite: spoken histories synthesised from AgentClinic cases, scored by WER and real-time factor per model.

Items: the opening of each AgentClinic history (demographics, history, presenting symptoms), spoken by
espeak-ng and converted to 16 kHz mono with sox. Nothing is installed here: when espeak-ng or sox is
missing, the suite stops and names the Debian packages (`make speech-tools` installs them visibly).
WER is counted by jiwer after Whisper's own English text normaliser (case, punctuation, numbers as digits,
one spelling), on the whole corpus (errors summed over items / reference words summed), as is customary.
Each faster-whisper model gets two rows: medagent's defaults (`[speech]`: beam, VAD, vocabulary prompt) and
the plain library (faster-whisper's own `transcribe`, beam 5, no prompt) on the same audio, scored the same.
The transcriber never sees an item's reference text.

Run it: `python -m medagent.evals.speech --limit 30 [--model NAME=RUNTIME:PATH ...]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from medagent.evals.suite import dev_file
from medagent.tools.config import SpeechSettings

DEBIAN_PACKAGES = {"espeak-ng": "espeak-ng", "sox": "sox"}
HISTORY_WORDS = 45  # ~15 s of speech per item at espeak-ng's 160 words/min

# ------------------------------------------------------------------ normalisation and WER


def _normaliser():  # noqa: ANN202 - whisper.normalizers.EnglishTextNormalizer
    # Whisper's own English normaliser (the one its papers score with): case, punctuation, spelled-out
    # numbers ("sixty-two" = "62"), British/American spellings, contractions. openai-whisper is installed
    # by `make setup` (--no-deps). Built per call (it reads a small spelling table), so nothing is cached here.
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalise(text: str) -> list[str]:
    """The words WER compares: Whisper's English normaliser applied, split on spaces.

    Its one rule that does not fit here is dropped: it deletes words in parentheses and brackets (in its
    benchmarks' transcripts they mark sounds, not speech), but every word of these references is spoken."""
    return _normaliser()(re.sub(r"[()\[\]<>]", " ", text)).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) after `normalise`, counted by jiwer."""
    import jiwer

    ref, hyp = " ".join(normalise(reference)), " ".join(normalise(hypothesis))
    if not ref:
        return len(hyp.split()), 0
    if not hyp:
        return len(ref.split()), len(ref.split())
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


def wer(reference: str, hypothesis: str) -> float:
    errors, words = word_errors(reference, hypothesis)
    return errors / max(1, words)


# ------------------------------------------------------------------ items


def missing_tools(search_path: str | None = None) -> list[str]:
    """Which of espeak-ng / sox are not on PATH (or on `search_path` when given)."""
    return [tool for tool in DEBIAN_PACKAGES if shutil.which(tool, path=search_path) is None]


def require_tools(search_path: str | None = None) -> None:
    missing = missing_tools(search_path)
    if missing:
        packages = " ".join(DEBIAN_PACKAGES[t] for t in missing)
        raise RuntimeError(
            f"the speech suite synthesises audio with espeak-ng and sox; missing: {', '.join(missing)}. "
            f"Install the Debian packages: apt-get install -y {packages} (or `make speech-tools`)"
        )


def spoken_history(question: str, words: int = HISTORY_WORDS) -> str:
    """What a clinician would dictate first: demographics, history and presenting symptoms, ~`words` words."""
    fields: dict[str, str] = {}
    for line in question.splitlines():
        key, _, value = line.strip().partition(":")
        if value.strip() and key in ("Demographics", "History", "Primary Symptom"):
            fields.setdefault(key, value.strip())
    parts = [fields.get("Demographics", ""), fields.get("History", ""), fields.get("Primary Symptom", "")]
    text = ". ".join(p.rstrip(".") for p in parts if p) + "."
    chosen = text.split()[:words]
    spoken = " ".join(chosen)
    cut = max(spoken.rfind("."), spoken.rfind(","))
    # end on a sentence or clause boundary so the reference is something a person would say
    return (spoken[: cut + 1] if cut > len(spoken) // 2 else spoken).rstrip(",") or text


def synthesise(text: str, out: Path, speed: int = 160, voice: str = "en-us") -> Path:
    """espeak-ng -> sox: 16 kHz mono 16-bit WAV."""
    require_tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True, capture_output=True)
    raw.unlink()
    return out


def agentclinic_file(data_dir: Path | None) -> Path:
    return dev_file(data_dir, "agentclinic")


def build_items(data_dir: Path | None, limit: int | None, audio_dir: Path) -> list[dict[str, Any]]:
    """Synthesised items {id, text, audio, seconds}; audio already made is reused (same text, same file)."""
    require_tools()
    items = []
    for line in agentclinic_file(data_dir).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text = spoken_history(row["question"])
        audio = audio_dir / f"{row['id']}.wav"
        stamp = audio.with_suffix(".txt")
        if not (audio.is_file() and stamp.is_file() and stamp.read_text() == text):
            synthesise(text, audio)
            stamp.write_text(text)
        import soundfile

        items.append(
            {"id": row["id"], "text": text, "audio": str(audio), "seconds": soundfile.info(str(audio)).duration}
        )
        if limit is not None and len(items) >= limit:
            break
    return items


# ------------------------------------------------------------------ scoring one model


def _score(name: str, runtime: str, settings: str, items: list[dict[str, Any]], hear: Any) -> dict[str, Any]:
    """Corpus WER and RTF of `hear(item) -> (text, audio seconds, seconds taken)` over the items, with a row each."""
    errors = words = 0
    audio_s = elapsed_s = 0.0
    rows = []
    for item in items:
        text, seconds, took = hear(item)
        e, w = word_errors(item["text"], text)
        rows.append({"id": item["id"], "wer": round(e / max(1, w), 4), "rtf": round(took / seconds if seconds else 0.0, 3),
                     "reference": item["text"], "hypothesis": text})  # fmt: skip
        errors, words, audio_s, elapsed_s = errors + e, words + w, audio_s + seconds, elapsed_s + took
    return {"model": name, "runtime": runtime, "settings": settings, "items": len(rows),
            "wer": round(errors / max(1, words), 4), "errors": errors, "words": words,
            "real_time_factor": round(elapsed_s / audio_s, 3) if audio_s else None,
            "audio_s": round(audio_s, 1), "rows": rows}  # fmt: skip


def describe(options: Any) -> str:
    prompt = "no prompt" if not options.initial_prompt else (
        "medical prompt" if options.initial_prompt == SpeechSettings().initial_prompt else "own prompt")
    return (f"beam {options.beam_size}, {prompt}, VAD {'on' if options.vad else 'off'}, "
            f"language {options.language or 'detected'}")  # fmt: skip


def evaluate_model(name: str, runtime: Any, items: list[dict[str, Any]], options: Any) -> dict[str, Any]:
    """Transcribe every item with one loaded runtime through medagent's transcriber; corpus WER and RTF.

    The transcriber is given `options` and the audio, nothing else: no item's reference text reaches it."""
    from medagent.specialists.speech import transcribe

    def hear(item: dict[str, Any]) -> tuple[str, float, float]:
        transcript = transcribe(runtime, Path(item["audio"]), options)
        return transcript.text, transcript.duration_s, transcript.elapsed_s

    return _score(name, runtime.name, describe(options), items, hear)


def evaluate_plain(name: str, model_dir: Path, items: list[dict[str, Any]], beam_size: int = 5) -> dict[str, Any]:
    """The plain library, for comparison: faster-whisper's `WhisperModel.transcribe` on each whole file with its
    own defaults (no prompt, no VAD, its decoding of the file) except beam 5, the same model folder and CPU int8."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", local_files_only=True)

    def hear(item: dict[str, Any]) -> tuple[str, float, float]:
        started = time.perf_counter()
        segments, info = model.transcribe(item["audio"], beam_size=beam_size)
        text = " ".join(s.text.strip() for s in segments)  # a generator: decoding happens here
        return text, info.duration, time.perf_counter() - started

    return _score(name, "faster-whisper (plain)", f"beam {beam_size}, no prompt, VAD off, library defaults", items,
                  hear)  # fmt: skip


def report_table(results: list[dict[str, Any]]) -> str:
    import os

    lines = [
        f"Speech suite on {platform.machine()} ({platform.processor() or 'cpu'}, {os.cpu_count()} CPUs), "
        f"{time.strftime('%Y-%m-%d')}; WER after Whisper's English normaliser, counted by jiwer over the corpus",
        "",
        "| model | runtime | settings | items | audio (s) | WER | real-time factor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['settings']} | {r['items']} | {r['audio_s']} | {r['wer']:.1%} "
            f"| {r['real_time_factor']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from medagent.specialists.speech import DecodeOptions, assemble_packaged_base, load_runtime
    from medagent.tools.config import cache_root

    defaults = SpeechSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder holding agentclinic/dev.jsonl")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/speech-suite"))
    parser.add_argument("--beam-size", type=int, default=defaults.beam_size)
    parser.add_argument("--no-prompt", action="store_true", help="leave out the medical vocabulary prompt")
    parser.add_argument("--prompt", default=None, help="another vocabulary prompt instead of [speech] initial_prompt")
    parser.add_argument("--no-vad", action="store_true", help="leave out voice-activity detection")
    parser.add_argument("--language", default=defaults.language, help="e.g. en; default: detected")
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain faster-whisper row")
    parser.add_argument(
        "--model", action="append", default=[],
        help="NAME=faster-whisper:CT2_DIR or NAME=openai-whisper:FILE.pt; default: the packaged Whisper base",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        items = build_items(args.data, args.limit, args.out / "audio")
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"speech suite: {exc}")
        return 2
    # medagent's defaults ([speech] in medagent.toml), changed only by the flags above.
    options = DecodeOptions(
        language=args.language, beam_size=args.beam_size, vad=defaults.vad and not args.no_vad,
        initial_prompt=None if args.no_prompt else (args.prompt or defaults.initial_prompt),
        temperature_fallback=defaults.temperature_fallback,
    )  # fmt: skip
    results = []
    for spec in args.model or ["whisper-base=faster-whisper:"]:
        name, _, rest = spec.partition("=")
        runtime_name, _, path = rest.partition(":")
        runtime = load_runtime(
            runtime_name, cache_root(),
            ct2_dir=Path(path) if path and runtime_name == "faster-whisper" else None,
            checkpoint=Path(path) if path and runtime_name == "openai-whisper" else None,
        )  # fmt: skip
        results.append(evaluate_model(name, runtime, items, options))
        print(report_table(results[-1:]).splitlines()[-1], flush=True)
        if runtime_name == "faster-whisper" and not args.no_plain:
            folder = Path(path) if path else assemble_packaged_base(cache_root())
            results.append(evaluate_plain(name, folder, items))
            print(report_table(results[-1:]).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "report.md").write_text(report_table(results) + "\n")
    print(report_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
