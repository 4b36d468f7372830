"""Trace schema v1: one JSON event per line, enough to score a run and rebuild training data.

Every event carries `schema_version`, `case_id`, `event`, `t` (monotonic seconds since the run
started), `ts` (wall clock, UTC ISO 8601) and `node` (the graph node that emitted it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medagent.tools.contracts import CallOrigin

TRACE_SCHEMA_VERSION = 1
EventName = Literal["case_loaded", "plan", "tool_call", "tool_result", "llm_turn", "grounding", "result", "error", "models"]


class TraceEvent(BaseModel):
    """One line of trace.jsonl. Event-specific fields sit beside the common ones."""

    model_config = ConfigDict(extra="allow")

    schema_version: Literal[1] = TRACE_SCHEMA_VERSION
    case_id: str
    event: EventName
    t: float = Field(description="Seconds since the run started (monotonic clock)")
    ts: str = Field(description="Wall-clock time, UTC ISO 8601")
    node: str


class CaseLoadedEvent(TraceEvent):
    event: Literal["case_loaded"] = "case_loaded"
    attachments: list[dict[str, Any]]
    has_history: bool
    phenotypes: dict[str, list[str]]


class PlanEvent(TraceEvent):
    event: Literal["plan"] = "plan"
    planner: str
    step: int
    calls: list[str] = Field(description="call ids planned in this step")


class ToolCallEvent(TraceEvent):
    event: Literal["tool_call"] = "tool_call"
    call_id: str
    tool: str
    arguments: dict[str, Any]
    origin: CallOrigin
    reason: str | None = None
    rejected: bool = False
    rejection: str | None = None


class ToolResultEvent(TraceEvent):
    event: Literal["tool_result"] = "tool_result"
    call_id: str
    tool: str
    evidence: list[str]
    error: bool
    details: list[dict[str, Any]] = Field(
        default_factory=list, description="each evidence item: id, summary, attachment, error, payload"
    )
    started: float
    finished: float
    seconds: float
    ran_on: str = Field(default="local", description="'local' (this process) or the Ray Serve deployment and replica")


class LLMTurnEvent(TraceEvent):
    event: Literal["llm_turn"] = "llm_turn"
    role: str = Field(description="planner, reporter, ...")
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float
    messages: list[dict[str, Any]] = Field(default_factory=list)
    completion: str = ""


class GroundingEvent(TraceEvent):
    event: Literal["grounding"] = "grounding"
    status: str
    verdicts: list[dict[str, Any]]


class ResultEvent(TraceEvent):
    event: Literal["result"] = "result"
    differential: list[dict[str, Any]]
    grounding: dict[str, Any]
    evidence_count: int
    timings: dict[str, Any]


class ModelsEvent(TraceEvent):
    """What the run's model pool holds when the run ends (the last event; a shared pool holds other runs' too)."""

    event: Literal["models"] = "models"
    loaded: list[dict[str, Any]] = Field(description="each held object: key, kind, bytes, estimate, load_s")
    total_bytes: int
    shared: bool = Field(description="whether the pool outlives this run (chat, evals, the Python API)")


class ErrorEvent(TraceEvent):
    event: Literal["error"] = "error"
    message: str
    call_id: str | None = None


EVENT_MODELS: dict[str, type[TraceEvent]] = {
    "case_loaded": CaseLoadedEvent,
    "plan": PlanEvent,
    "tool_call": ToolCallEvent,
    "tool_result": ToolResultEvent,
    "llm_turn": LLMTurnEvent,
    "grounding": GroundingEvent,
    "result": ResultEvent,
    "error": ErrorEvent,
    "models": ModelsEvent,
}


def trace_json_schema() -> dict[str, Any]:
    """One schema whose `oneOf` lists every event type."""
    defs: dict[str, Any] = {}
    variants = []
    for name, model in EVENT_MODELS.items():
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
        variants.append({"$ref": f"#/$defs/{model.__name__}"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "medagent trace event (schema v1), one per line of trace.jsonl",
        "oneOf": variants,
        "$defs": defs,
    }


class TraceRecorder:
    """Collects events in memory (thread-safe), optionally streams them to a JSONL file and hands each one to
    `on_event` as it is recorded (a job's event stream, a consultation turn's SSE stream)."""

    def __init__(self, case_id: str, path: Path | None = None,
                 on_event: Callable[[TraceEvent], None] | None = None) -> None:
        self.case_id = case_id
        self.on_event = on_event
        self.start = time.monotonic()
        self.events: list[TraceEvent] = []
        self._lock = threading.Lock()
        self._path = path
        self._file = None

    def now(self) -> float:
        return round(time.monotonic() - self.start, 6)

    def emit(self, model: type[TraceEvent], node: str, /, **fields: Any) -> TraceEvent:
        event = model(
            case_id=self.case_id,
            t=self.now(),
            ts=datetime.now(UTC).isoformat(timespec="milliseconds"),
            node=node,
            **fields,
        )
        with self._lock:
            self.events.append(event)
            if self._path is not None:
                if self._file is None:
                    self._file = self._path.open("a", encoding="utf-8")
                self._file.write(event.model_dump_json() + "\n")
                self._file.flush()
        if self.on_event is not None:
            self.on_event(event)
        return event

    def write(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as handle:
            for event in self.events:
                handle.write(event.model_dump_json() + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_trace(path: Path) -> list[TraceEvent]:
    """Parse a trace.jsonl back into typed events (unknown event names are an error)."""
    events: list[TraceEvent] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        raw = json.loads(line)
        model = EVENT_MODELS.get(raw.get("event"))
        if model is None:
            raise ValueError(f"{path}:{number}: unknown trace event {raw.get('event')!r}")
        events.append(model.model_validate(raw))
    return events
