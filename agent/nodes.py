"""The graph's nodes: intake, plan, act, reflect, report. Topology lives in graph.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig

from medagent.agent.execute import execute
from medagent.agent.planner import coverage_guard, unexaminable
from medagent.agent.state import CaseState, RunContext
from medagent.tools.contracts import Result, Timings, ToolCall
from medagent.tools.knowledge import conflict_lines
from medagent.tools.trace import CaseLoadedEvent, ErrorEvent, GroundingEvent, PlanEvent, ResultEvent


def ctx_of(config: RunnableConfig) -> RunContext:
    return config["configurable"]["run"]


def _timed(name: str, started: float) -> dict[str, Any]:
    return {"node_seconds": [(name, time.monotonic() - started)]}


async def intake(state: CaseState, config: RunnableConfig) -> dict[str, Any]:
    started = time.monotonic()
    run = ctx_of(config)
    case = state["case"]
    run.trace.emit(
        CaseLoadedEvent,
        "intake",
        attachments=[
            {"id": a.id, "kind": a.kind.value, "modality": a.modality, "format": a.format} for a in case.attachments
        ],
        has_history=bool(case.history.strip()),
        phenotypes={"present": case.phenotypes.present, "excluded": case.phenotypes.excluded},
    )
    for warning in state.get("warnings", []):
        run.trace.emit(ErrorEvent, "intake", message=f"warning: {warning}")
    return {"step": 0, "calls": [], "evidence": [], **_timed("intake", started)}


async def plan(state: CaseState, config: RunnableConfig) -> dict[str, Any]:
    started = time.monotonic()
    run = ctx_of(config)
    tools = run.registry.available()
    done = state.get("calls", [])
    calls = await _maybe_async(run.planner.plan, state["case"], tools, state.get("evidence", []), done)
    if run.coverage_guard:
        calls = list(calls) + coverage_guard(state["case"], tools, calls, done)
    calls = _number(calls, done)
    run.trace.emit(PlanEvent, "plan", planner=run.planner.name, step=1, calls=[c.call_id for c in calls])
    return {"pending": calls, "step": 1, **_timed("plan", started)}


async def reflect(state: CaseState, config: RunnableConfig) -> dict[str, Any]:
    started = time.monotonic()
    run = ctx_of(config)
    step = state.get("step", 1)
    if step >= run.settings.agent.max_steps or run.time_left() <= 0:
        return {"pending": [], **_timed("reflect", started)}
    tools = run.registry.available()
    calls = await _maybe_async(run.planner.reflect, state["case"], tools, state.get("evidence", []), state.get("calls", []))
    calls = _number(list(calls), state.get("calls", []))
    if calls:
        run.trace.emit(PlanEvent, "reflect", planner=run.planner.name, step=step + 1, calls=[c.call_id for c in calls])
    return {"pending": calls, "step": step + 1 if calls else step, **_timed("reflect", started)}


def _number(calls: list[ToolCall], done: list[ToolCall]) -> list[ToolCall]:
    """Give calls run-unique ids C1, C2, ... in the order they were planned."""
    return [c.model_copy(update={"call_id": f"C{len(done) + i + 1}"}) for i, c in enumerate(calls)]


async def _maybe_async(function: Any, *args: Any) -> Any:
    value = function(*args)
    if asyncio.iscoroutine(value):
        value = await value
    return value


async def act(state: CaseState, config: RunnableConfig) -> dict[str, Any]:
    """Run the pending calls (agent/execute.py) and record their evidence."""
    started = time.monotonic()
    run = ctx_of(config)
    batch = await execute(run, state["case"], Path(state["case_dir"]), list(state.get("pending", [])),
                          list(state.get("evidence", [])), list(state.get("calls", [])))
    return {
        "calls": list(state.get("pending", [])),
        "pending": [],
        "rejected": [{"call_id": r.call_id, "tool": r.tool, "reason": r.reason} for r in batch.rejected],
        "evidence": batch.evidence,
        "tool_seconds": batch.tool_seconds,
        **_timed("act", started),
    }


async def report(state: CaseState, config: RunnableConfig) -> dict[str, Any]:
    started = time.monotonic()
    run = ctx_of(config)
    case = state["case"]
    evidence = state.get("evidence", [])
    limitations = [*run.notes, *unexaminable(case, run.registry.available())]
    limitations += [f"Call {r['call_id']} ({r['tool']}) was rejected: {r['reason']}" for r in state.get("rejected", [])]
    limitations += [f"Intake: {w}" for w in state.get("warnings", [])]
    draft = await _maybe_async(run.reporter.report, case, evidence, limitations)
    report_ = draft.report.model_copy(update={"conflicts": conflict_lines(evidence)})
    grounding = draft.grounding
    run.trace.emit(
        GroundingEvent,
        "report",
        status=grounding.status,
        verdicts=[{"text": s.text, "citations": s.citations, "verdict": s.verdict.value} for s in report_.sentences],
    )
    node_seconds: dict[str, float] = {}
    for name, seconds in state.get("node_seconds", []) + [("report", time.monotonic() - started)]:
        node_seconds[name] = round(node_seconds.get(name, 0.0) + seconds, 6)
    result = Result(
        case_id=case.id,
        question=case.question,
        differential=draft.differential,
        differential_note=draft.differential_note,
        findings=draft.findings,
        report=report_,
        evidence=evidence,
        calls=state.get("calls", []),
        grounding=grounding,
        timings=Timings(
            total_s=round(run.trace.now(), 6),
            nodes_s=node_seconds,
            tools_s={cid: round(s, 6) for cid, s in state.get("tool_seconds", [])},
        ),
        models={**run.models, "planner": run.planner.name, "reporter": run.reporter.name},
    )
    run.trace.emit(
        ResultEvent,
        "report",
        differential=[c.model_dump() for c in draft.differential],
        grounding=grounding.model_dump(),
        evidence_count=len(evidence),
        timings=result.timings.model_dump(),
    )
    return {"result": result}
