"""Speech suite: spoken histories synthesised from AgentClinic cases, scored by WER and real-time factor per model.

Items: the opening of each AgentClinic history (demographics, history, presenting symptoms), spoken by
espeak-ng and converted to 16 kHz mono with sox. Nothing is installed here: when espeak-ng or sox is
missing, the suite stops and names the Debian packages (`make speech-tools` installs them visibly).
WER is computed after normalising case, punctuation, hyphens and numbers ("Sixty-two" = "62"), on the
whole corpus (errors summed over items / reference words summed), as is customary.

Run it: `python -m medagent.evals.speech --limit 10 [--model NAME=RUNTIME:PATH ...]`.
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

DEBIAN_PACKAGES = {"espeak-ng": "espeak-ng", "sox": "sox"}
HISTORY_WORDS = 45  # ~15 s of speech per item at espeak-ng's 160 words/min

UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SYMBOLS = {"%": " percent ", "°c": " degrees celsius ", "°f": " degrees fahrenheit ", "&": " and ", "/": " per "}


# ------------------------------------------------------------------ normalisation and WER


def _number_words_to_digits(words: list[str]) -> list[str]:
    """'sixty two' -> '62', 'one hundred and five' -> '105' (0-999 is what histories say)."""
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        value, used = None, 0
        if word in UNITS:
            value, used = UNITS.index(word), 1
        elif word in TENS[2:]:
            value, used = TENS.index(word) * 10, 1
            if i + 1 < len(words) and words[i + 1] in UNITS[1:10]:
                value, used = value + UNITS.index(words[i + 1]), 2
        if value is not None and i + used < len(words) and words[i + used] == "hundred" and value < 10:
            value, used = value * 100, used + 1
            rest = words[i + used :]
            skip = 1 if rest[:1] == ["and"] else 0
            tail = _number_words_to_digits(rest[skip : skip + 2])
            if tail and tail[0].isdigit() and int(tail[0]) < 100:
                value += int(tail[0])
                used += skip + (2 if len(tail) == 1 and len(rest[skip : skip + 2]) == 2 else 1)
        if value is None:
            out.append(word)
            i += 1
        else:
            out.append(str(value))
            i += used
    return out


def normalise(text: str) -> list[str]:
    """Lower case, no punctuation, hyphens split, numbers as digits: the words WER compares."""
    text = text.lower()
    for symbol, spoken in SYMBOLS.items():
        text = text.replace(symbol, spoken)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<=\d)\.(?=\d)", " point ", text)
    text = re.sub(r"[-–—]", " ", text)
    text = re.sub(r"[^a-z0-9' ]+", " ", text).replace("'", "")
    return _number_words_to_digits(text.split())


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    ref = normalise(reference)
    return edit_distance(ref, normalise(hypothesis)) / max(1, len(ref))


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


def evaluate_model(name: str, runtime: Any, items: list[dict[str, Any]], options: Any) -> dict[str, Any]:
    """Transcribe every item with one loaded runtime; corpus WER and real-time factor."""
    from medagent.specialists.speech import transcribe

    errors = words = 0
    audio_s = elapsed_s = 0.0
    rows = []
    for item in items:
        transcript = transcribe(runtime, Path(item["audio"]), options)
        ref, hyp = normalise(item["text"]), normalise(transcript.text)
        distance = edit_distance(ref, hyp)
        errors, words = errors + distance, words + len(ref)
        audio_s, elapsed_s = audio_s + transcript.duration_s, elapsed_s + transcript.elapsed_s
        rows.append({"id": item["id"], "wer": round(distance / max(1, len(ref)), 4),
                     "rtf": round(transcript.real_time_factor, 3),
                     "reference": item["text"], "hypothesis": transcript.text})  # fmt: skip
    return {
        "model": name,
        "runtime": runtime.name,
        "items": len(items),
        "wer": round(errors / max(1, words), 4),
        "real_time_factor": round(elapsed_s / audio_s, 3) if audio_s else None,
        "audio_s": round(audio_s, 1),
        "rows": rows,
    }


def report_table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"Speech suite on {platform.machine()} ({__import__('os').cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}",
        "",
        "| model | runtime | items | audio (s) | WER | real-time factor |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['items']} | {r['audio_s']} | {r['wer']:.1%} "
            f"| {r['real_time_factor']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from medagent.specialists.speech import DecodeOptions, load_runtime
    from medagent.tools.config import MEDICAL_PROMPT, cache_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder holding agentclinic/dev.jsonl")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/speech-suite"))
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--no-prompt", action="store_true", help="leave out the medical vocabulary prompt")
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
    options = DecodeOptions(beam_size=args.beam_size, initial_prompt=None if args.no_prompt else MEDICAL_PROMPT)
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "report.md").write_text(report_table(results) + "\n")
    print(report_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
