"""The graph's nodes: intake, plan, act, reflect, report. Topology lives in graph.py."""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.runnables import RunnableConfig

from medagent.agent.planner import call_key, coverage_guard, unexaminable
from medagent.agent.state import CaseState, RunContext
from medagent.tools.contracts import Evidence, EvidenceDraft, Result, Timings, ToolCall
from medagent.tools.errors import MedagentError
from medagent.tools.knowledge import conflict_lines
from medagent.tools.registry import ToolContext
from medagent.tools.trace import (
    CaseLoadedEvent,
    ErrorEvent,
    GroundingEvent,
    PlanEvent,
    ResultEvent,
    ToolCallEvent,
    ToolResultEvent,
)


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
    """Validate the pending calls, run the accepted ones concurrently, record their evidence."""
    started = time.monotonic()
    run = ctx_of(config)
    case = state["case"]
    done_keys = {call_key(c.tool, c.arguments) for c in state.get("calls", [])}
    accepted: list[tuple[ToolCall, Any]] = []
    rejected: list[dict[str, Any]] = []
    for call in state.get("pending", []):
        args, reason = run.registry.validate(call, case)
        if reason is None and call_key(call.tool, call.arguments) in done_keys:
            reason = "repeated call: the same tool with the same arguments already ran"
        done_keys.add(call_key(call.tool, call.arguments))
        run.trace.emit(
            ToolCallEvent,
            "act",
            call_id=call.call_id,
            tool=call.tool,
            arguments=call.arguments,
            origin=call.origin,
            reason=call.reason,
            rejected=reason is not None,
            rejection=reason,
        )
        if reason is None:
            accepted.append((call, args))
        else:
            rejected.append({"call_id": call.call_id, "tool": call.tool, "reason": reason})

    tool_ctx = ToolContext(
        case=case,
        case_dir=_case_dir(state),
        artifacts_dir=run.artifacts_dir,
        settings=run.settings,
        evidence_so_far=list(state.get("evidence", [])),
    )
    semaphore = asyncio.Semaphore(run.settings.agent.max_concurrency)
    # Our own pool, sized by max_concurrency: asyncio's default one has only cpu_count + 4 threads.
    pool = ThreadPoolExecutor(max_workers=run.settings.agent.max_concurrency, thread_name_prefix="medagent-tool")
    try:
        outcomes = await asyncio.gather(*(_run_one(run, call, args, tool_ctx, semaphore, pool) for call, args in accepted))
    finally:
        pool.shutdown(wait=False)  # a timed-out tool's thread may still be running; never wait for it

    evidence: list[Evidence] = []
    next_id = len(state.get("evidence", [])) + 1
    tool_seconds = []
    for (call, _), (drafts, t0, t1) in zip(accepted, outcomes):
        ids = []
        drafts = [run.registry.tools[call.tool].checked(d) for d in drafts]  # payloads match the tool's model
        for draft in drafts:
            item = Evidence(id=f"E{next_id}", tool=call.tool, call_id=call.call_id, **draft.model_dump())
            next_id += 1
            evidence.append(item)
            ids.append(item.id)
        error = any(d.error for d in drafts)
        run.trace.emit(
            ToolResultEvent, "act", call_id=call.call_id, tool=call.tool, evidence=ids, error=error,
            details=evidence_details(evidence[len(evidence) - len(ids):]),
            started=t0, finished=t1, seconds=round(t1 - t0, 6),
        )
        tool_seconds.append((call.call_id, t1 - t0))
        run.progress(f"{'✗' if error else '✓'} {call.tool}({_args_text(call)}) → {', '.join(ids)} in {t1 - t0:.2f}s")
    return {
        "calls": list(state.get("pending", [])),
        "pending": [],
        "rejected": rejected,
        "evidence": evidence,
        "tool_seconds": tool_seconds,
        **_timed("act", started),
    }


def evidence_details(items: list[Evidence]) -> list[dict[str, Any]]:
    """What the trace keeps of each evidence item, so a trace alone can be scored on its content."""
    return [{"id": e.id, "summary": e.summary, "attachment": e.attachment, "error": e.error, "payload": e.payload} for e in items]


def _case_dir(state: CaseState):
    from pathlib import Path

    return Path(state["case_dir"])


def _args_text(call: ToolCall) -> str:
    return ", ".join(f"{k}={v}" for k, v in call.arguments.items())


async def _run_one(run: RunContext, call: ToolCall, args: Any, ctx: ToolContext, semaphore: asyncio.Semaphore,
                   pool: ThreadPoolExecutor) -> tuple[list[EvidenceDraft], float, float]:
    tool = run.registry.tools[call.tool]
    attachment = getattr(args, "attachment", None)
    async with semaphore:
        run.progress(f"… {call.tool}({_args_text(call)})")
        t0 = run.trace.now()
        timeout, left = run.settings.agent.tool_timeout_s, run.time_left()
        try:
            if left <= 0:
                raise TimeoutError
            work = asyncio.get_running_loop().run_in_executor(pool, functools.partial(tool.run, args, ctx))
            drafts = await asyncio.wait_for(work, timeout=min(timeout, left))
            if not drafts:
                drafts = [EvidenceDraft(summary=f"{call.tool} returned no findings.", attachment=attachment, error=True)]
        except asyncio.TimeoutError:
            message = f"{call.tool} timed out after {timeout:g} s" if left > timeout else budget_spent(run, call, left)
            drafts = [EvidenceDraft(summary=message, attachment=attachment, error=True)]
            run.trace.emit(ErrorEvent, "act", message=message, call_id=call.call_id)
        except MedagentError as exc:
            drafts = [EvidenceDraft(summary=f"{call.tool} could not examine the input: {exc}", attachment=attachment, error=True)]
            run.trace.emit(ErrorEvent, "act", message=str(exc), call_id=call.call_id)
        except Exception as exc:  # a crashing model must not crash the run: it becomes error evidence
            message = f"{call.tool} failed: {exc.__class__.__name__}: {exc}"
            drafts = [EvidenceDraft(summary=message, attachment=attachment, error=True)]
            run.trace.emit(ErrorEvent, "act", message=message, call_id=call.call_id)
        t1 = run.trace.now()
    return drafts, t0, t1


def budget_spent(run: RunContext, call: ToolCall, left: float) -> str:
    """The error evidence of a call the solve budget cut off (or never let start); the report's limitations say it."""
    budget = run.settings.agent.solve_budget_s
    what = "was not run" if left <= 0 else "was cut off"
    note = f"The solve budget of {budget:g} s ([agent] solve_budget_s) ran out: calls still running or waiting were stopped"
    if note not in run.notes:
        run.notes.append(note)
    return f"{call.tool} {what}: the solve budget of {budget:g} s ([agent] solve_budget_s) ran out"


async def report(state: CaseState, config: RunnableConfig) -> dict[str, Any]:
    started = time.monotonic()
    run = ctx_of(config)
    case = state["case"]
    evidence = state.get("evidence", [])
    limitations = [*run.notes, *unexaminable(case, run.registry.available())]
    limitations += [f"Call {r['call_id']} ({r['tool']}) was rejected: {r['reason']}" for r in state.get("rejected", [])]
    limitations += [f"Intake: {w}" for w in state.get("warnings", [])]
    differential, note, findings, report_, grounding = await _maybe_async(run.reporter.report, case, evidence, limitations)
    report_ = report_.model_copy(update={"conflicts": conflict_lines(evidence)})
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
        differential=differential,
        differential_note=note,
        findings=findings,
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
        differential=[c.model_dump() for c in differential],
        grounding=grounding.model_dump(),
        evidence_count=len(evidence),
        timings=result.timings.model_dump(),
    )
    return {"result": result}
