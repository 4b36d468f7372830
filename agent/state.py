"""The graph's state (what flows between nodes and what a checkpointer persists) and run context."""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, TypedDict

from medagent.tools.config import Settings
from medagent.tools.contracts import Case, Evidence, Result, ToolCall
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Registry
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


@dataclass
class RunContext:
    """Per-run services the nodes use; passed in the graph config, never persisted."""

    settings: Settings
    registry: Registry
    trace: TraceRecorder
    artifacts_dir: Path
    planner: Any
    reporter: Any
    models: dict[str, str] = field(default_factory=dict)
    pool: ModelPool = field(default_factory=ModelPool)  # loaded models; shared when a process serves many runs
    on_progress: Callable[[str], None] | None = None
    notes: list[str] = field(default_factory=list)  # what changed how the run was done (e.g. rules for the LLM)
    deadline: float = 0.0  # time.monotonic() at which [agent] solve_budget_s runs out; set when the run starts

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.settings.agent.solve_budget_s

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def progress(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)
