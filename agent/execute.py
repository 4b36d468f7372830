"""The one code that runs tools: a batch of planned calls in, numbered evidence out.

Every entry point runs tools through `execute`: the graph's act node (so `solve`, the Python API,
chat turns and every eval item, the scripted `direct`/`pipeline` ones included). It validates each
call (arguments, attachment, availability, repeats), runs the accepted ones concurrently under the
per-tool timeout and the solve budget, turns every failure into error evidence, numbers the evidence
and writes the trace events.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medagent.agent.planner import call_key
from medagent.agent.scale import RemoteToolFailure
from medagent.agent.state import RunContext
from medagent.tools.contracts import Case, Evidence, EvidenceDraft, ToolCall
from medagent.tools.errors import MedagentError
from medagent.tools.registry import ToolContext
from medagent.tools.trace import ErrorEvent, ToolCallEvent, ToolResultEvent


@dataclass
class Rejection:
    call_id: str
    tool: str
    reason: str


@dataclass
class Batch:
    """What one batch of calls produced."""

    evidence: list[Evidence] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    tool_seconds: list[tuple[str, float]] = field(default_factory=list)


async def execute(run: RunContext, case: Case, case_dir: Path, calls: list[ToolCall], evidence_so_far: list[Evidence],
                  done: list[ToolCall]) -> Batch:
    """Validate `calls` against the registry and the calls already `done`, run the accepted ones, record their evidence."""
    done_keys = {call_key(c.tool, c.arguments) for c in done}
    accepted: list[tuple[ToolCall, BaseModel]] = []
    batch = Batch()
    for call in calls:
        args, reason = run.registry.validate(call, case)
        if reason is None and call_key(call.tool, call.arguments) in done_keys:
            reason = "repeated call: the same tool with the same arguments already ran"
        done_keys.add(call_key(call.tool, call.arguments))
        run.trace.emit(ToolCallEvent, "act", call_id=call.call_id, tool=call.tool, arguments=call.arguments,
                       origin=call.origin, reason=call.reason, rejected=reason is not None, rejection=reason)
        if reason is None:
            accepted.append((call, args))
        else:
            batch.rejected.append(Rejection(call.call_id, call.tool, reason))

    tool_ctx = ToolContext(case=case, case_dir=case_dir, artifacts_dir=run.artifacts_dir, settings=run.settings,
                           evidence_so_far=list(evidence_so_far), pool=run.pool)
    semaphore = asyncio.Semaphore(run.settings.agent.max_concurrency)
    # Our own pool, sized by max_concurrency: asyncio's default one has only cpu_count + 4 threads.
    threads = ThreadPoolExecutor(max_workers=run.settings.agent.max_concurrency, thread_name_prefix="medagent-tool")
    try:
        outcomes = await asyncio.gather(*(_run_one(run, call, args, tool_ctx, semaphore, threads) for call, args in accepted))
    finally:
        threads.shutdown(wait=False)  # a timed-out tool's thread may still be running; never wait for it

    next_id = len(evidence_so_far) + 1
    for (call, _), (drafts, t0, t1, ran_on) in zip(accepted, outcomes, strict=True):
        drafts = [run.registry.tools[call.tool].checked(d) for d in drafts]  # payloads match the tool's model
        recorded = [Evidence(id=f"E{next_id + i}", tool=call.tool, call_id=call.call_id, **d.model_dump())
                    for i, d in enumerate(drafts)]
        next_id += len(recorded)
        batch.evidence.extend(recorded)
        ids = [e.id for e in recorded]
        error = any(d.error for d in drafts)
        run.trace.emit(ToolResultEvent, "act", call_id=call.call_id, tool=call.tool, evidence=ids, error=error,
                       details=evidence_details(recorded), started=t0, finished=t1, seconds=round(t1 - t0, 6),
                       ran_on=ran_on)
        batch.tool_seconds.append((call.call_id, t1 - t0))
        run.progress(f"{'✗' if error else '✓'} {call.tool}({_args_text(call)}) → {', '.join(ids)} in {t1 - t0:.2f}s")
    return batch


def evidence_details(items: list[Evidence]) -> list[dict[str, Any]]:
    """What the trace keeps of each evidence item, so a trace alone can be scored on its content."""
    return [{"id": e.id, "summary": e.summary, "attachment": e.attachment, "error": e.error, "payload": e.payload} for e in items]


def _args_text(call: ToolCall) -> str:
    return ", ".join(f"{k}={v}" for k, v in call.arguments.items())


def _error(run: RunContext, call: ToolCall, attachment: str | None, summary: str, message: str | None = None) -> list[EvidenceDraft]:
    run.trace.emit(ErrorEvent, "act", message=message or summary, call_id=call.call_id)
    return [EvidenceDraft(summary=summary, attachment=attachment, error=True)]


async def _run_one(run: RunContext, call: ToolCall, args: BaseModel, ctx: ToolContext, semaphore: asyncio.Semaphore,
                   threads: ThreadPoolExecutor) -> tuple[list[EvidenceDraft], float, float, str]:
    tool = run.registry.tools[call.tool]
    attachment = getattr(args, "attachment", None)
    ran_on = "local" if tool.remote is None else tool.remote.label
    async with semaphore:
        run.progress(f"… {call.tool}({_args_text(call)})")
        t0 = run.trace.now()
        timeout, left = run.settings.agent.tool_timeout_s, run.time_left()
        try:
            if left <= 0:
                raise TimeoutError
            if tool.remote is None:
                work = asyncio.get_running_loop().run_in_executor(threads, functools.partial(tool.run, args, ctx))
            else:  # on the cluster (agent/scale.py): the call's own wait is bounded by the same time
                work = asyncio.get_running_loop().run_in_executor(
                    threads, functools.partial(tool.remote.call, call.tool, args, ctx, min(timeout, left)))
            drafts = await asyncio.wait_for(work, timeout=min(timeout, left) + (0 if tool.remote is None else 5))
            if tool.remote is not None:
                drafts, ran_on = drafts
            if not drafts:
                drafts = [EvidenceDraft(summary=f"{call.tool} returned no findings.", attachment=attachment, error=True)]
        except TimeoutError:
            message = f"{call.tool} timed out after {timeout:g} s" if left > timeout else budget_spent(run, call, left)
            drafts = _error(run, call, attachment, message)
        except MedagentError as exc:
            drafts = _error(run, call, attachment, f"{call.tool} could not examine the input: {exc}", str(exc))
        except Exception as exc:  # a crashing model must not crash the run: it becomes error evidence
            kind = exc.kind if isinstance(exc, RemoteToolFailure) else exc.__class__.__name__  # a replica's: its own class
            drafts = _error(run, call, attachment, f"{call.tool} failed: {kind}: {exc}")
        t1 = run.trace.now()
    return drafts, t0, t1, ran_on


def budget_spent(run: RunContext, call: ToolCall, left: float) -> str:
    """The error evidence of a call the solve budget cut off (or never let start); the report's limitations say it."""
    budget = run.settings.agent.solve_budget_s
    what = "was not run" if left <= 0 else "was cut off"
    note = f"The solve budget of {budget:g} s ([agent] solve_budget_s) ran out: calls still running or waiting were stopped"
    if note not in run.notes:
        run.notes.append(note)
    return f"{call.tool} {what}: the solve budget of {budget:g} s ([agent] solve_budget_s) ran out"
