"""The LLM reporter: the differential and cited report sentences, checked by the grounding checker.

The model only sees tool evidence (ids, summaries) and the screened case text; its reply is
constrained to cite existing evidence ids. Every sentence then goes through the grounding checker:
unsupported ones stay in the report, flagged (result.json verdicts, marked in report.md). A
diagnosis no tool ranked is kept below the tools' ones, marked as the model's own with the findings it
rests on (dropped when none of them is in the case or the evidence). On any LLM failure the template
reporter writes the report, and its sentences are checked the same way.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from medagent.agent import prompts
from medagent.agent.grounding import GroundingChecker, default_checker
from medagent.agent.llm.base import ChatResult, LLMError
from medagent.agent.llm_planner import evidence_text, render_case
from medagent.agent.reporter import TemplateReporter, differential_from_evidence, restated_findings
from medagent.agent.state import ReportDraft
from medagent.tools.config import Settings
from medagent.tools.contracts import (
    Case,
    DiagnosisCandidate,
    Evidence,
    Finding,
    Report,
    ReportSentence,
)
from medagent.tools.pool import ModelPool
from medagent.tools.trace import ErrorEvent, LLMTurnEvent, TraceRecorder

MAX_SENTENCES = 6
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "\\": "\\", "/": "/"}


def partial_sentence_texts(reply: str) -> list[str]:
    """The `text` values of the `sentences` array in a JSON reply that may still be half-written.

    The last value may be cut short; an escape cut in the middle is held back until it is complete,
    so each value only ever grows as more of the reply arrives.
    """
    position = reply.find('"sentences"')
    texts: list[str] = []
    while position >= 0:
        key = reply.find('"text"', position)
        if key < 0:
            break
        i = key + len('"text"')
        while i < len(reply) and reply[i] in " \t\r\n:":
            i += 1
        if i >= len(reply) or reply[i] != '"':
            break
        i += 1
        chars: list[str] = []
        closed = False
        while i < len(reply):
            c = reply[i]
            if c == '"':
                closed = True
                i += 1
                break
            if c != "\\":
                chars.append(c)
                i += 1
                continue
            if i + 1 >= len(reply):
                break
            if reply[i + 1] == "u":
                if i + 6 > len(reply):
                    break
                try:
                    chars.append(chr(int(reply[i + 2 : i + 6], 16)))
                except ValueError:  # not a valid escape: show it as written
                    chars.append(reply[i : i + 6])
                i += 6
                continue
            chars.append(_ESCAPES.get(reply[i + 1], reply[i + 1]))
            i += 2
        texts.append("".join(chars))
        if not closed:
            break
        position = i
    return texts


class SentenceStream:
    """Hands the report sentences to `on_text` piece by piece while the model is still writing them."""

    def __init__(self, on_text: Callable[[str], None]) -> None:
        self.on_text = on_text
        self.reply = ""
        self._shown: list[int] = []  # characters already handed over, per sentence

    def feed(self, piece: str) -> None:
        self.reply += piece
        for index, text in enumerate(partial_sentence_texts(self.reply)):
            if index == len(self._shown):
                if index:
                    self.on_text("\n")
                self._shown.append(0)
            if len(text) > self._shown[index]:
                self.on_text(text[self._shown[index] :])
                self._shown[index] = len(text)

    def close(self) -> None:
        if self._shown:
            self.on_text("\n")


def report_schema(ids: list[str]) -> dict[str, Any]:
    cite = {"type": "array", "items": {"enum": ids}, "maxItems": 3}
    return {
        "type": "object",
        "properties": {
            "other_diagnoses": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 80},
                "findings": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 60}},
                "citations": cite}, "required": ["name", "findings", "citations"]}},
            "sentences": {"type": "array", "maxItems": MAX_SENTENCES, "items": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 220}, "citations": cite}, "required": ["text", "citations"]}},
        },
        "required": ["other_diagnoses", "sentences"],
    }


class LLMReporter:
    """`on_text`, when given, receives the report sentences as the model writes them (before grounding)."""

    def __init__(self, backend: Any, settings: Settings, trace: TraceRecorder | None = None, checker: GroundingChecker | None = None,
                 on_text: Callable[[str], None] | None = None, pool: ModelPool | None = None) -> None:
        self.backend = backend
        self.on_text = on_text
        self.settings = settings
        self.trace = trace
        self.checker = checker or default_checker(settings.llm.grounding_similarity, pool)
        self.name = f"llm:{backend.name}"

    async def report(self, case: Case, evidence: Sequence[Evidence], limitations: Sequence[str]) -> ReportDraft:
        usable = [e for e in evidence if not e.error]
        try:
            if not usable:
                raise LLMError("no usable tool evidence to report on")
            differential, note, sentences, cut = await self._write(case, evidence)
        except Exception as exc:  # any LLM failure: the template reporter writes the report
            if self.trace is not None:
                self.trace.emit(ErrorEvent, "report", message=f"LLM reporter failed ({exc.__class__.__name__}: {exc}); the template reporter wrote the report")
            draft = TemplateReporter().report(case, evidence, limitations)
            sentences, summary = self.checker.check_report(draft.report.sentences, evidence)
            return ReportDraft(draft.differential, draft.differential_note, draft.findings,
                               draft.report.model_copy(update={"sentences": sentences}), summary)
        # A small model repeats itself: one copy of a sentence says all it says (it keeps its verdict).
        unique: dict[str, ReportSentence] = {}
        for sentence in sentences:
            unique.setdefault(" ".join(sentence.text.lower().split()), sentence)
        sentences = list(unique.values())
        checked, _ = self.checker.check_report(sentences, evidence)
        # Every finding stays in the report, grounded: evidence that no supported sentence cites is
        # restated as the template reporter would, after the LLM's own sentences.
        supported = {c for sentence in checked if sentence.verdict.value == "supported" for c in sentence.citations}
        restated = [s for s in restated_findings([e for e in usable if e.id not in supported]) if s.citations[0] not in supported]
        checked, summary = self.checker.check_report([*sentences, *restated], evidence)
        findings = [Finding(statement=e.summary, evidence=[e.id]) for e in usable]
        failed = [f"{e.tool} on {e.attachment or 'the case'} failed: {e.summary} [{e.id}]" for e in evidence if e.error]
        return ReportDraft(differential, note, findings, Report(sentences=checked, limitations=[*failed, *cut, *limitations]), summary)

    async def _write(self, case: Case, evidence: Sequence[Evidence]) -> tuple[list[DiagnosisCandidate], str, list[ReportSentence], list[str]]:
        ranked = differential_from_evidence(evidence)
        case_text, _ = render_case(case, show_history=False)
        lines = []
        for item in evidence:
            summary = evidence_text(item)
            lines.append(f"[{item.id}] {item.tool}{' on ' + item.attachment if item.attachment else ''}{' (FAILED)' if item.error else ''}: {summary[:300]}")
        candidates = ""
        if ranked:
            candidates = "Diagnoses ranked by tools: " + "; ".join(f"{c.rank}. {c.name} [{', '.join(c.evidence)}]" for c in ranked[:8]) + "\n"
        messages = [
            {"role": "system", "content": prompts.REPORTER_SYSTEM},
            {"role": "user", "content": prompts.REPORTER_CASE.format(case=case_text, evidence="\n".join(lines), candidates=candidates, max_sentences=MAX_SENTENCES)},
        ]
        schema = report_schema([e.id for e in evidence])
        try:
            if self.on_text is None:
                result = await asyncio.wait_for(
                    self.backend.chat(messages, schema=schema, max_tokens=self.settings.llm.report_max_tokens),
                    timeout=self.settings.llm.timeout_s,
                )
            else:
                result = await asyncio.wait_for(self._stream(messages, schema), timeout=self.settings.llm.timeout_s)
        except TimeoutError as exc:
            raise LLMError(f"no reporter answer within {self.settings.llm.timeout_s:g} s") from exc
        if self.trace is not None:
            self.trace.emit(
                LLMTurnEvent, "report", role="reporter", model=result.model, prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens, seconds=round(result.seconds, 6), messages=messages, completion=result.text,
            )
        reply = result.json(salvage=True)  # a reply cut by report_max_tokens keeps its finished sentences
        cut = [] if result.json_is_complete() else [
            f"The LLM's report reached the {self.settings.llm.report_max_tokens}-token limit ([llm] report_max_tokens); "
            "only the sentences it finished are kept."]
        if not isinstance(reply, dict) or not isinstance(reply.get("sentences"), list):
            raise LLMError(f"reporter reply has no 'sentences' list: {result.text[:120]!r}")
        sentences = [
            ReportSentence(text=str(s.get("text", "")).strip(), citations=[str(c) for c in s.get("citations", []) if isinstance(c, str)])
            for s in reply["sentences"] if isinstance(s, dict) and str(s.get("text", "")).strip()
        ]
        if not sentences:
            raise LLMError("the reporter wrote no sentences")
        differential, note = merge_differential(reply.get("other_diagnoses") or [], ranked, [case_text, *lines])
        return differential, note, sentences, cut


    async def _stream(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> ChatResult:
        """The same constrained reply as `chat`, shown sentence by sentence as it is decoded."""
        assert self.on_text is not None
        started = time.monotonic()
        stream = SentenceStream(self.on_text)
        try:
            async for piece in self.backend.stream(messages, schema=schema, max_tokens=self.settings.llm.report_max_tokens):
                stream.feed(piece)
        finally:
            stream.close()
        return ChatResult(text=stream.reply, model=self.backend.name, seconds=time.monotonic() - started)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def grounded_findings(findings: Sequence[Any], sources: Sequence[str]) -> list[str]:
    """The findings whose every word of three letters or more occurs in what the model was shown.

    What the model was shown is the screened case (without the free-text history) and the tool evidence,
    so a finding the model made up, or one only an instruction hidden in a history could supply, does not
    count. Words, not whole strings: "fever and productive cough" rests on a case that says "cough
    (productive), fever 38.9 C"."""
    seen = set(_words(" ".join(sources)))
    kept: list[str] = []
    for finding in findings:
        text = " ".join(str(finding).split())[:60]
        words = [w for w in _words(text) if len(w) >= 3]
        if words and all(w in seen for w in words) and text.lower() not in {k.lower() for k in kept}:
            kept.append(text)
    return kept


def merge_differential(proposed: list[Any], ranked: list[DiagnosisCandidate],
                       sources: Sequence[str] = ()) -> tuple[list[DiagnosisCandidate], str]:
    """The tools' candidates in the tools' order, then the LLM's own candidates, marked as the LLM's.

    The model never reorders what the tools ranked, nor puts its own names above them: patient text
    reaches the model, so an instruction hidden in a history ("reply: diagnosis healthy") could otherwise
    make itself the top of the differential. A diagnosis only the model proposes (the graph knows little
    common disease: pneumonia, appendicitis) is kept below, `proposed_by: "llm"`, with the findings it
    rests on; those must occur in `sources` (what the model was shown: `grounded_findings`), and a
    candidate left with none is dropped, and the note says so."""
    known = {c.name.lower() for c in ranked}
    merged = [c.model_copy(update={"rank": i + 1}) for i, c in enumerate(ranked)]
    own, dropped = [], []
    for item in proposed:
        if not isinstance(item, dict) or not str(item.get("name", "")).strip():
            continue
        name = " ".join(str(item["name"]).split())
        if name.lower() in known:
            continue
        known.add(name.lower())
        findings = grounded_findings(item.get("findings") or [], sources)
        if not findings:
            dropped.append(name)
            continue
        own.append(name)
        merged.append(DiagnosisCandidate(
            rank=len(merged) + 1, name=name, proposed_by="llm", findings=findings,
            rationale=f"Proposed by the LLM, resting on: {'; '.join(findings)}. No tool ranked it (unverified).",
            evidence=[str(c) for c in item.get("citations", []) if isinstance(c, str)],
        ))
    notes = []
    if own:
        notes.append(f"Flagged: {', '.join(own)} {'was' if len(own) == 1 else 'were'} proposed by the LLM without a tool "
                     "ranking; listed after the ranked candidates, unverified.")
    if dropped:
        notes.append(f"Dropped: {', '.join(dropped)}, proposed by the LLM on no finding that the case or the evidence holds.")
    if not merged:
        notes.append("No diagnosis is proposed: no tool in this run ranked diagnoses.")
    return merged, " ".join(notes)
