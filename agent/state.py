"""The graph's state (what flows between nodes and what a checkpointer persists) and run context."""

from __future__ import annotations

import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol, TypedDict

from medagent.tools.config import Settings
from medagent.tools.contracts import (
    Case,
    DiagnosisCandidate,
    Evidence,
    Finding,
    GroundingSummary,
    Report,
    Result,
    ToolCall,
)
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Registry, Tool
from medagent.tools.trace import TraceRecorder


class CaseState(TypedDict, total=False):
    case: Case
    case_dir: str
    warnings: Annotated[list[str], operator.add]
    pending: list[ToolCall]  # calls planned and not yet run (replaced by each plan/reflect)
    calls: Annotated[list[ToolCall], operator.add]  # every call made or rejected, in order
    rejected: Annotated[list[dict[str, Any]], operator.add]  # {call_id, reason}
    evidence: Annotated[list[Evidence], operator.add]
    step: int
    node_seconds: Annotated[list[tuple[str, float]], operator.add]
    tool_seconds: Annotated[list[tuple[str, float]], operator.add]
    result: Result


class Planner(Protocol):
    """Plans a case's tool calls: `plan` once, then `reflect` on the evidence until it proposes nothing.
    Either may be a coroutine function."""

    name: str

    def plan(self, case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence],
             calls: Sequence[ToolCall]) -> list[ToolCall] | Awaitable[list[ToolCall]]: ...

    def reflect(self, case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence],
                calls: Sequence[ToolCall]) -> list[ToolCall] | Awaitable[list[ToolCall]]: ...


@dataclass
class ReportDraft:
    """What a reporter writes; the report node adds the conflicts and builds the Result."""

    differential: list[DiagnosisCandidate]
    differential_note: str
    findings: list[Finding]
    report: Report
    grounding: GroundingSummary


class Reporter(Protocol):
    name: str

    def report(self, case: Case, evidence: Sequence[Evidence],
               limitations: Sequence[str]) -> ReportDraft | Awaitable[ReportDraft]: ...


@dataclass
class RunContext:
    """Per-run services the nodes use; passed in the graph config, never persisted."""

    settings: Settings
    registry: Registry
    trace: TraceRecorder
    artifacts_dir: Path
    planner: Planner
    reporter: Reporter
    models: dict[str, str] = field(default_factory=dict)
    pool: ModelPool = field(default_factory=ModelPool)  # loaded models; shared when a process serves many runs
    on_progress: Callable[[str], None] | None = None
    notes: list[str] = field(default_factory=list)  # what changed how the run was done (e.g. rules for the LLM)
    coverage_guard: bool = True  # False: the run adds no calls of its own (a scripted planner: an eval's fixed steps)
    deadline: float = 0.0  # time.monotonic() at which [agent] solve_budget_s runs out; set when the run starts

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.settings.agent.solve_budget_s

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def progress(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)
