"""The LLM planner: schema-constrained tool calls, validated, repaired, guarded; the rule planner as fallback.

One planning turn: system prompt + tool catalogue (fixed prefix), then the case between <case>
markers. The reply is constrained to a JSON Schema built from the available tools, whose
`attachment` arguments are enums of the case's attachments each tool fits. Every call is then
validated by the registry (pydantic + attachment/modality checks) and against calls already made;
rejected calls go back to the model with the reason, for at most `max_repairs` rounds. Any backend
failure (server down, timeout, unusable JSON) records an error event and the rule planner plans
the step instead, so a run never crashes or hangs on the LLM.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from medagent.agent import prompts
from medagent.agent.llm.base import LLMError, Message
from medagent.agent.planner import RulePlanner, _calls, _rules, call_key
from medagent.tools.config import Settings
from medagent.tools.contracts import CallOrigin, Case, Evidence, ToolCall
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Registry, Tool
from medagent.tools.trace import ErrorEvent, LLMTurnEvent, TraceRecorder

# Sentences in patient text that talk to the model instead of about the patient.
_INSTRUCTION = re.compile(
    r"<\|?im_(start|end)\|?>|\[/?INST\]|<\|?(system|assistant|user)\|?>|###\s*(instruction|system|response|input)"
    r"|(^|\s)(system|assistant|developer)\s*:"
    r"|\b(ignore|disregard|forget|override|bypass|skip)\b.{0,50}\b(instructions?|prompts?|rules?|guidelines?|above|previous|prior|earlier|system)\b"
    r"|\byou are now\b|\bact as\b|\bpretend\b|\bnew (instructions?|rules?|task|orders?)\b|\bsystem prompt\b"
    r"|\b(call|run|use|invoke|execute|trigger|launch|add)\b.{0,40}\b(tools?|functions?)\b"
    r"|\b(imaging|speech|pathology|knowledge)\.[a-z_]+\b"
    r"|\b(output|reply|respond|answer|print|return|reveal|repeat)\b.{0,40}\b(json|calls?|empty list|your prompt|instructions)\b",
    re.IGNORECASE,
)
# Sentence ends, plus chat-template markers, JSON blocks, code fences and a capital after ':', ')', ']' or '}'
# (none of these blocks ends with a full stop): an injected block never swallows the clinical sentence after it.
# Splitting finer only ever keeps more clinical text.
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+|(?=<\|?im_start)|(?<=<\|im_end\|>)\s*|(?=\[INST\])|(?<=\[/INST\])\s*"
                       r"|(?<=[:)\]}])\s+(?=[A-Z])|\s+(?=[\[{]\s*[\[{\"])|(?<=```)\s+|\s+(?=```)")


def screen_patient_text(text: str) -> tuple[str, list[str]]:
    """Drop sentences that address the model (prompt injection); keep every clinical sentence."""
    kept, removed = [], []
    for sentence in _SENTENCE.split(text):
        if not sentence.strip():
            continue
        (removed if _INSTRUCTION.search(sentence) else kept).append(sentence.strip())
    # The text sits between <case> markers: it must not be able to close them.
    return " ".join(kept).replace("<", "(").replace(">", ")"), removed


HISTORY_NOT_SHOWN = "History: not shown (patient text; knowledge.link reads it)"


def render_case(case: Case, show_history: bool = True) -> tuple[str, list[str]]:
    """The case as the model sees it, and the instruction-like sentences that were screened out.

    The planner's first turn sees the screened history (it plans from it); its follow-up turns, once the
    history is linked, and the reporter do not (`show_history` False): they work from the tools' evidence, in which the history arrives as the phenotypes
    knowledge.link found, so an instruction hidden in a history has nothing to act on there. Attachment
    descriptions are never shown (they are free text and no tool choice depends on them)."""
    history, removed = screen_patient_text(case.history)
    question, removed_q = screen_patient_text(case.question)
    lines = []
    if case.patient.age_years is not None or case.patient.sex.value != "unknown":
        lines.append(f"Patient: {case.patient.age_years if case.patient.age_years is not None else '?'} y, {case.patient.sex.value}")
    if history and show_history:
        lines.append(f"History: {history}")
    elif case.history.strip():
        lines.append(HISTORY_NOT_SHOWN)
    if case.findings:
        lines.append("Findings: " + "; ".join(f"{m.name} {m.value}{' ' + m.unit if m.unit else ''}" for m in case.findings))
    if case.phenotypes.present:
        lines.append("Phenotypes: " + ", ".join(case.phenotypes.present))
    for attachment in case.attachments:
        removed += screen_patient_text(attachment.description or "")[1]  # reported, and never shown either
        lines.append(f"Attachment {attachment.id}: {attachment.kind.value}{' ' + attachment.modality if attachment.modality else ''}")
    if not case.attachments:
        lines.append("Attachments: none")
    lines.append(f"Question: {question or 'What is the most likely diagnosis?'}")
    return "\n".join(lines), removed + removed_q


_QUOTED = re.compile(r'"[^"]*"')


def evidence_text(item: Evidence) -> str:
    """An evidence summary as the model may read it: a transcript is patient speech, so its words are left
    out (knowledge.link reads them); other summaries are screened."""
    summary = item.summary
    if item.tool.startswith("speech."):
        summary = _QUOTED.sub('"(transcript not shown: patient text; knowledge.link reads it)"', summary)
    return screen_patient_text(summary)[0]


def catalogue(tools: Sequence[Tool]) -> str:
    lines = []
    for tool in sorted(tools, key=lambda t: t.name):  # stable order keeps the cached prefix stable
        fields = [f"{name}{'' if field.is_required() else '?'}" for name, field in tool.args.model_fields.items()]
        takes = "/".join(k.value for k in tool.attachment_kinds) or "no attachment"
        modalities = f" ({', '.join(tool.modalities)})" if tool.modalities else ""
        lines.append(f"- {tool.name}({', '.join(fields)}): {tool.purpose} Takes: {takes}{modalities}.")
    return "\n".join(lines)


def _strip_titles(schema: Any) -> Any:
    """Argument schema for the grammar: no prose, and strings bounded so a reply fits its token budget."""
    if isinstance(schema, dict):
        out = {k: _strip_titles(v) for k, v in schema.items() if k not in {"title", "description", "default"}}
        if out.get("type") == "string" and "enum" not in out:
            out["maxLength"] = min(out.get("maxLength", 240), 240)
        return out
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def call_schema(case: Case, tools: Sequence[Tool], max_calls: int, exclude: set[str] = frozenset(),
                evidence: Sequence[Evidence] = ()) -> dict[str, Any] | None:
    """JSON Schema of the planner's reply; None when no call is possible at all. Attachments are enums of the
    case's fitting ones; free-text arguments are enums of their grounded values (Tool.grounded)."""
    variants = []
    for tool in sorted(tools, key=lambda t: t.name):
        arguments = _strip_titles(tool.args.model_json_schema())
        if "attachment" in tool.args.model_fields:
            ids = [a.id for a in case.attachments if tool.fits(a) and call_key(tool.name, {"attachment": a.id}) not in exclude]
            if not ids:
                continue
            arguments["properties"]["attachment"] = {"enum": ids}
        if tool.grounded is not None and not _ground(arguments, tool.grounded(case, evidence)):
            continue
        variants.append({
            "type": "object",
            "properties": {"tool": {"const": tool.name}, "arguments": arguments, "reason": {"type": "string", "maxLength": 80}},
            "required": ["tool", "arguments"],
        })
    if not variants:
        return None
    return {"type": "object", "properties": {"calls": {"type": "array", "items": {"anyOf": variants}, "maxItems": max_calls}}, "required": ["calls"]}


def _ground(arguments: dict[str, Any], allowed: dict[str, list[str]]) -> bool:
    """Constrain each grounded field to its values (a list field: its items). An optional field with none is
    left out; a required one makes the call impossible (False)."""
    required = set(arguments.get("required", []))
    for name, values in allowed.items():
        if not values:
            if name in required:
                return False
            arguments["properties"].pop(name, None)
            continue
        field = arguments["properties"].get(name, {})
        is_list = field.get("type") == "array" or any(v.get("type") == "array" for v in field.get("anyOf", []))
        arguments["properties"][name] = {"type": "array", "items": {"enum": values}} if is_list else {"enum": values}
    return True


def parse_calls(payload: Any, origin: CallOrigin) -> list[ToolCall]:
    """Calls from the model's JSON; a malformed reply raises LLMError (it becomes a fallback)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("calls"), list):
        raise LLMError(f"planner reply has no 'calls' list: {str(payload)[:120]}")
    calls = []
    for item in payload["calls"]:
        if not isinstance(item, dict) or not isinstance(item.get("tool"), str):
            raise LLMError(f"planner reply has a call without a tool name: {str(item)[:120]}")
        arguments = item.get("arguments") if isinstance(item.get("arguments"), dict) else {}
        reason = item.get("reason") if isinstance(item.get("reason"), str) else None
        calls.append(ToolCall(call_id="P", tool=item["tool"], arguments=arguments, origin=origin, reason=reason))
    return calls


# Arguments that carry free text (a history, a transcript): in the list of calls made they are not shown (not
# even their length, which alone flipped a small model's choice), so patient words reach the model only in
# the first turn, as the screened history.
TEXT_ARGUMENTS = frozenset({"text"})


def shown_arguments(call: ToolCall) -> dict[str, Any]:
    return {k: "(text not shown)" if k in TEXT_ARGUMENTS and isinstance(v, str) else v
            for k, v in call.arguments.items()}


def planner_messages(case_text: str, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[Message]:
    lines = []
    if calls:
        lines.append("Calls already made: " + "; ".join(f"{c.tool}({json.dumps(shown_arguments(c))})" for c in calls))
    for item in evidence:
        summary = evidence_text(item)
        lines.append(f"[{item.id}] {item.tool}{' on ' + item.attachment if item.attachment else ''}: {summary[:300]}")
    context = ("\n".join(lines) + "\n") if lines else ""
    return [
        {"role": "system", "content": prompts.PLANNER_SYSTEM.replace("{catalogue}", catalogue(tools))},
        {"role": "user", "content": prompts.PLANNER_CASE.format(case=case_text, evidence=context)},
    ]


class LLMPlanner:
    def __init__(self, backend: Any, settings: Settings, trace: TraceRecorder | None = None, pool: ModelPool | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.trace = trace
        self.pool = pool if pool is not None else ModelPool()  # what the calls' prechecks load (the run's pool)
        self.rules = RulePlanner()
        self._idle = False
        self.name = f"llm:{backend.name}"

    # -- the two graph entry points ------------------------------------------------------------
    async def plan(self, case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[ToolCall]:
        try:
            proposed = await self._turn("plan", case, tools, evidence, calls)
        except Exception as exc:  # any LLM failure: the rule planner plans this step instead
            self._error("plan", f"LLM planner failed ({exc.__class__.__name__}: {exc}); the rule planner planned this step")
            return self.rules.plan(case, tools, evidence, calls)
        # The adapters' first-step rules (e.g. link the history to phenotypes) stay on as a guard; the
        # attachment coverage guard runs after the planner in the graph.
        # They see the screened history too, so injected text reaches no tool's arguments.
        screened = case.model_copy(update={"history": screen_patient_text(case.history)[0]})
        keys = {call_key(c.tool, c.arguments) for c in [*calls, *proposed]}
        guard = [
            c
            for rule in _rules("FIRST_STEP_RULES")
            for c in _calls(rule(screened, tools, evidence, calls), [*calls, *proposed], CallOrigin.guard, "C")
            if call_key(c.tool, c.arguments) not in keys
        ]
        return proposed + guard

    async def reflect(self, case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[ToolCall]:
        follow_ups = self.rules.reflect(case, tools, evidence, calls)
        if not self.settings.llm.reflect or self._idle:
            return follow_ups
        try:
            proposed = await self._turn("reflect", case, tools, evidence, calls)
        except Exception as exc:  # fall back to the rule planner's follow-ups
            self._error("reflect", f"LLM reflection failed ({exc.__class__.__name__}: {exc}); rule follow-ups used")
            return follow_ups
        # Loop guard: once the model has nothing new to ask, later rounds do not ask it again.
        self._idle = not proposed
        # The rule follow-ups (e.g. transcript → knowledge links) stay on as a guard.
        keys = {call_key(c.tool, c.arguments) for c in proposed}
        return proposed + [c for c in follow_ups if call_key(c.tool, c.arguments) not in keys]

    # -- one planning turn with validation and repair -----------------------------------------
    async def _turn(self, node: str, case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[ToolCall]:
        llm = self.settings.llm
        done = {call_key(c.tool, c.arguments) for c in calls}
        schema = call_schema(case, tools, llm.max_calls, exclude=done, evidence=evidence)
        if schema is None:
            return []  # nothing the model could still ask for: no turn spent
        # The history is shown to the first turn only (to choose what to examine); once it is linked, later
        # turns reason over the evidence (its phenotypes), so patient free text cannot steer follow-up calls.
        linked = any(e.tool == "knowledge.link" and not e.error for e in evidence)
        case_text, removed = render_case(case, show_history=node == "plan" or not linked)
        if removed:
            self._error(node, f"warning: {len(removed)} instruction-like sentence(s) in the case text were not shown to the planner: {removed!r}"[:400])
        messages = self.messages(case_text, tools, evidence, calls)
        result = await self._chat(node, messages, schema, llm.plan_max_tokens)
        # A reply the token limit cut keeps the calls it completed (the grammar makes each one valid JSON).
        accepted, rejections = self.check(parse_calls(result.json(salvage=True), CallOrigin.llm), case, tools, done, evidence)
        if rejections:
            accepted += await self.repair(case, tools, messages, result.text, rejections, done, node, evidence)
        return accepted

    def check(self, proposals: list[ToolCall], case: Case, tools: Sequence[Tool], done: set[str],
              evidence: Sequence[Evidence] = ()) -> tuple[list[ToolCall], list[tuple[ToolCall, str]]]:
        """Split proposals into accepted calls and (call, reason) rejections; `done` gains the accepted keys.
        The model's calls must also keep to grounded argument values (Tool.grounded)."""
        registry = Registry(self.settings, list(tools), self.pool)
        accepted, rejections = [], []
        for call in proposals:
            key = call_key(call.tool, call.arguments)
            _, reason = registry.validate(call, case)
            if reason is None and call.tool in registry.tools:
                reason = registry.tools[call.tool].ungrounded(call.arguments, case, evidence)
            if reason is None and key in done:
                # Loop guard: a repeat is dropped, never repaired (asking again only invites the same reply).
                self._error("plan", f"loop guard: dropped repeated call {call.tool}({json.dumps(call.arguments)})")
                continue
            if reason is None:
                accepted.append(call)
                done.add(key)
            else:
                rejections.append((call, reason))
        return accepted, rejections

    async def repair(
        self, case: Case, tools: Sequence[Tool], messages: list[Message], reply: str,
        rejections: list[tuple[ToolCall, str]], done: set[str], node: str = "plan", evidence: Sequence[Evidence] = (),
    ) -> list[ToolCall]:
        """The bounded repair loop: the model sees each rejected call with its reason and may fix it."""
        schema = call_schema(case, tools, self.settings.llm.max_calls, exclude=done, evidence=evidence)
        accepted: list[ToolCall] = []
        for _ in range(self.settings.llm.max_repairs):
            for call, reason in rejections:
                self._error(node, f"planner proposal {call.tool}({json.dumps(call.arguments)}) rejected: {reason}")
            if schema is None:
                return accepted
            listing = "\n".join(f"- {c.tool} {json.dumps(c.arguments)}: {r}" for c, r in rejections)
            messages = messages + [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": prompts.PLANNER_REPAIR.format(rejections=listing)},
            ]
            result = await self._chat(node, messages, schema, self.settings.llm.plan_max_tokens)
            reply = result.text
            more, rejections = self.check(parse_calls(result.json(salvage=True), CallOrigin.repair), case, tools, done, evidence)
            accepted += more
            if not rejections:
                return accepted
        for call, reason in rejections:
            self._error(node, f"planner proposal {call.tool}({json.dumps(call.arguments)}) dropped after repair: {reason}")
        return accepted

    def messages(self, case_text: str, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[Message]:
        return planner_messages(case_text, tools, evidence, calls)

    async def _chat(self, node: str, messages: list[Message], schema: dict[str, Any], max_tokens: int):
        try:
            result = await asyncio.wait_for(self.backend.chat(messages, schema=schema, max_tokens=max_tokens), timeout=self.settings.llm.timeout_s)
        except TimeoutError as exc:
            raise LLMError(f"no planner answer within {self.settings.llm.timeout_s:g} s") from exc
        if self.trace is not None:
            self.trace.emit(
                LLMTurnEvent, node, role="planner", model=result.model, prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens, seconds=round(result.seconds, 6), messages=messages, completion=result.text,
            )
        return result

    def _error(self, node: str, message: str) -> None:
        if self.trace is not None:
            self.trace.emit(ErrorEvent, node, message=message)

