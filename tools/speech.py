"""`speech.transcribe`: a dictated history or patient interview turned into time-stamped transcript evidence.

One evidence item per recording: the summary quotes the words with their time span (what report.md
shows), the payload holds the full `transcript` and its `segments` ({start, end, text, confidence}).
The knowledge adapter's follow-up rule (`words_to_link`) hands `payload['transcript']` to `knowledge.link`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field

from medagent.tools.config import Settings, cache_root
from medagent.tools.contracts import AttachmentKind, Case, EvidenceDraft
from medagent.tools.errors import CaseError, UnavailableError
from medagent.tools.payloads import TranscriptPayload
from medagent.tools.pool import ModelPool
from medagent.tools.registry import AttachmentArgs, Build, Tool, ToolContext

QUOTE_WORDS = 60  # the summary quotes about this many words; the payload keeps everything
CONTEXT_TERMS = 24  # case words added to the vocabulary prompt (Whisper keeps at most ~220 prompt tokens)


class TranscribeArgs(AttachmentArgs):
    language: str | None = Field(default=None, description="Language code such as 'en'; omit to detect it")
    word_timestamps: bool = Field(default=False, description="Also time each word")


def _config_path(settings: Settings, path: Path | None) -> Path | None:
    # Paths in medagent.toml are relative to the file that names them.
    if path is None:
        return None
    path = path.expanduser()
    if not path.is_absolute() and settings.source is not None:
        path = settings.source.parent / path
    return path


def check(settings: Settings) -> str | None:
    """Why speech.transcribe cannot run under these settings (cheap: nothing is loaded), or None."""
    speech = settings.speech
    if not speech.enabled:
        return "speech is disabled in the config ([speech] enabled = false)"
    if speech.runtime == "faster-whisper":
        if importlib.util.find_spec("faster_whisper") is None:
            return "the faster-whisper package is not installed (pip install faster-whisper)"
        ct2_dir = _config_path(settings, speech.ct2_dir)
        if ct2_dir is not None:
            return (
                None
                if (ct2_dir / "model.bin").is_file()
                else f"[speech] ct2_dir {ct2_dir} holds no CTranslate2 model.bin"
            )
        from medagent.specialists.speech.load import ModelUnavailable, packaged_parts

        try:
            packaged_parts()
        except ModelUnavailable as exc:
            return str(exc)
        return None
    if importlib.util.find_spec("whisper") is None:
        return "openai-whisper is not installed (pip install --no-deps openai-whisper numba tiktoken more-itertools)"
    checkpoint = _config_path(settings, speech.checkpoint)
    if checkpoint is None:
        return 'the openai-whisper runtime needs [speech] checkpoint = "/path/to/model.pt"'
    return None if checkpoint.is_file() else f"[speech] checkpoint {checkpoint} does not exist"


def version(settings: Settings) -> str:
    speech = settings.speech
    if speech.runtime == "openai-whisper":
        return f"openai-whisper {_config_path(settings, speech.checkpoint)}"
    ct2_dir = _config_path(settings, speech.ct2_dir)
    if ct2_dir is not None:
        return f"faster-whisper {ct2_dir}"
    from medagent.specialists.speech.load import PACKAGED_MODEL

    return f"faster-whisper {PACKAGED_MODEL}"


def model_files(settings: Settings) -> list[tuple[str, Path]]:
    if settings.speech.runtime != "faster-whisper":
        return []
    from medagent.specialists.speech.load import packaged_model_dir

    return [("Whisper (CTranslate2)", Path(settings.speech.ct2_dir or packaged_model_dir(cache_root(settings))).expanduser())]


def doctor(settings: Settings) -> list[str]:
    from medagent.specialists.speech.load import packaged_model_dir

    speech = settings.speech
    lines = [f"speech runtime: {speech.runtime} on {speech.device}, beam {speech.beam_size}, "
             f"voice-activity detection {'on' if speech.vad else 'off'}"]
    if speech.runtime == "faster-whisper" and speech.ct2_dir is None:
        folder = packaged_model_dir(cache_root(settings))
        state = "assembled" if (folder / "SHA256SUMS").is_file() else "assembled on first use"
        lines.append(f"default Whisper base (CTranslate2): {folder} ({state})")
    elif speech.runtime == "faster-whisper":
        lines.append(f"CTranslate2 model folder: {_config_path(settings, speech.ct2_dir)}")
    else:
        lines.append(f"openai-whisper checkpoint: {_config_path(settings, speech.checkpoint)}")
    return lines


def _runtime(settings: Settings, pool: ModelPool):  # noqa: ANN202 - a specialists runtime; imported lazily to keep intake cheap
    from medagent.specialists.speech.load import ModelUnavailable, load_runtime

    speech = settings.speech
    arguments = (speech.runtime, cache_root(settings), _config_path(settings, speech.ct2_dir),
                 _config_path(settings, speech.checkpoint), speech.device, speech.compute_type, speech.cpu_threads)  # fmt: skip
    try:
        return pool.get(("speech", *arguments), lambda: load_runtime(*arguments))
    except ModelUnavailable as exc:
        raise UnavailableError(f"speech.transcribe: {exc}") from exc


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}" if minutes else f"{rest:.1f} s"


def _quote(segments: list) -> tuple[str, float, float, bool]:
    """The first ~QUOTE_WORDS words, whole segments, and the span they cover."""
    words, chosen = 0, []
    for segment in segments:
        chosen.append(segment)
        words += len(segment.text.split())
        if words >= QUOTE_WORDS:
            break
    text = " ".join(s.text for s in chosen)
    return text, chosen[0].start, chosen[-1].end, len(chosen) < len(segments)


def case_vocabulary(ctx: ToolContext) -> list[str]:
    """Words this recording is likely to use, from the case's *other* fields: the names of its findings, the
    labels of its coded phenotypes (from the knowledge graph) and a question that is not the default one.

    Never the typed history or another transcript: a dictation is often the very text of the history, and a
    prompt holding it would hand Whisper the answer (and hide its errors)."""
    case = ctx.case
    words = [f.name for f in case.findings]
    coded = case.phenotypes.present + case.phenotypes.excluded
    if coded:
        from medagent.tools.knowledge import knowledge_graph

        try:
            graph = knowledge_graph(ctx.settings, ctx.pool)
        except UnavailableError:  # no graph could be read: the prompt goes without the labels
            graph = None
        for term in coded if graph is not None else []:
            index = graph.resolve(term)
            if index is not None:
                words.append(graph.labels[index])
    if case.question.strip() and case.question != Case.model_fields["question"].default:
        words.append(case.question.strip())
    return list(dict.fromkeys(w.strip() for w in words if w.strip()))[:CONTEXT_TERMS]


def prompt_for(ctx: ToolContext) -> str | None:
    """The vocabulary prompt: the configured medical prompt, then the case's own words (`case_vocabulary`)."""
    speech = ctx.settings.speech
    parts = [speech.initial_prompt or ""]
    if speech.case_context:
        words = case_vocabulary(ctx)
        if words:
            parts.append("This case: " + ", ".join(words) + ".")
    return " ".join(p for p in parts if p) or None


def transcribe_attachment(args: TranscribeArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.specialists.speech.audio import AudioError
    from medagent.specialists.speech.infer import transcribe
    from medagent.specialists.speech.model import DecodeOptions

    attachment, path = ctx.attachment(args.attachment)
    speech = ctx.settings.speech
    runtime = _runtime(ctx.settings, ctx.pool)
    options = DecodeOptions(
        language=args.language or speech.language,
        initial_prompt=prompt_for(ctx),
        beam_size=speech.beam_size,
        vad=speech.vad,
        word_timestamps=args.word_timestamps or speech.word_timestamps,
        temperature_fallback=speech.temperature_fallback,
        max_tokens=speech.max_tokens,
    )
    try:
        transcript = transcribe(
            runtime,
            path,
            options,
            window_s=speech.window_s,
            silence_dbfs=speech.silence_dbfs,
            max_seconds=speech.max_minutes * 60,
        )
    except AudioError as exc:
        raise CaseError(f"attachment '{attachment.id}': {exc}") from exc

    segments = [
        {"start": s.start, "end": s.end, "text": s.text, "confidence": round(s.confidence, 3)}
        | ({"avg_logprob": round(s.avg_logprob, 3)} if s.avg_logprob is not None else {})
        | ({"no_speech_prob": round(s.no_speech_prob, 3)} if s.no_speech_prob is not None else {})
        | (
            {
                "words": [
                    {
                        "start": round(w.start, 2),
                        "end": round(w.end, 2),
                        "text": w.text,
                        "probability": round(w.probability, 3),
                    }
                    for w in s.words
                ]
            }
            if s.words
            else {}
        )
        for s in transcript.segments
    ]
    spoken = sum(s.end - s.start for s in transcript.segments)
    confidence = sum(s.confidence * (s.end - s.start) for s in transcript.segments) / spoken if spoken > 0 else None
    payload = {
        "transcript": transcript.text,
        "segments": segments,
        "language": transcript.language,
        "language_probability": round(transcript.language_probability, 3)
        if transcript.language_probability is not None
        else None,
        "duration_s": transcript.duration_s,
        "silent_s": transcript.silent_s,
        "non_speech_s": transcript.non_speech_s,
        "prompt": options.initial_prompt,
        "runtime": transcript.runtime,
        "model": transcript.model,
        "real_time_factor": round(transcript.real_time_factor, 3),
        "notes": transcript.notes,
    }
    label = f"{attachment.id} ({_clock(transcript.duration_s)}"
    if transcript.segments:
        quote, start, end, more = _quote(transcript.segments)
        language = f", {transcript.language}" if transcript.language else ""
        rest = (
            f" … ({len(transcript.segments)} segments in all, to {_clock(transcript.segments[-1].end)})" if more else ""
        )
        summary = f'Speech in {label}{language}), {_clock(start)}–{_clock(end)}: "{quote}"{rest}'
    else:
        summary = f"No speech recognised in {label}): {'; '.join(transcript.notes)}"
    if transcript.truncated and transcript.segments:
        summary += f" [{transcript.notes[0]}]"
    return [
        EvidenceDraft(
            summary=summary,
            attachment=attachment.id,
            payload=payload,
            confidence=round(confidence, 3) if confidence is not None else None,
        )
    ]


TOOLS = [
    Tool(
        name="speech.transcribe",
        purpose="Transcribe an audio recording (dictated history, patient interview) with Whisper; "
        "returns time-stamped text.",
        args=TranscribeArgs,
        run=transcribe_attachment,
        payload=TranscriptPayload,
        attachment_kinds=(AttachmentKind.audio,),
        check=check,
        version=version,
        doctor=doctor,
        model_files=model_files,
    )
]


# -- one-time build (agent/setup.py runs it) ----------------------------------------------------------------

def _speech_wanted(settings: Settings) -> bool:
    tool = next(t for t in TOOLS if t.name == "speech.transcribe")
    return settings.speech.runtime == "faster-whisper" and settings.speech.ct2_dir is None and tool.check(settings) is None


def _speech_ready(settings: Settings, pool: ModelPool) -> bool:
    from medagent.specialists.speech.load import packaged_model_dir

    return (packaged_model_dir(cache_root(settings)) / "model.bin").is_file()


def _speech_build(settings: Settings, pool: ModelPool) -> str:
    from medagent.specialists.speech.load import assemble_packaged_base

    return f"Whisper base at {assemble_packaged_base(cache_root(settings))}"


BUILDS = [Build("Whisper base speech model", ("speech.transcribe",), _speech_wanted, _speech_ready, _speech_build)]
