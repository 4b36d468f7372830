"""`medagent eval run` / `eval score`: one runner for every suite and mode.

A run folder holds run.json (suite, settings, versions), traces/<item>.jsonl, results/<item>.json,
scores.jsonl (one line per finished item: a restart skips those) and report.md.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as metadata
import json
import platform
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medagent.evals.scoring import aggregate, score_events
from medagent.evals.suite import Suite, SuiteItem, load_suite, shared_data_dir
from medagent.tools.config import Settings, load_settings
from medagent.tools.contracts import Evidence, EvidenceDraft, Result, ToolCall
from medagent.tools.errors import MedagentError
from medagent.tools.intake import LoadedCase, load_case, resolve_attachments
from medagent.tools.registry import Registry, ToolContext
from medagent.tools.trace import ResultEvent, ToolCallEvent, ToolResultEvent, TraceRecorder, read_trace


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
    for name in ("medagent", "torch", "langgraph", "hpo3", "llama-cpp-python", "faster-whisper", "monai"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _load_item_case(item: SuiteItem, suite: Suite, settings: Settings) -> LoadedCase:
    if item.case is not None:
        return resolve_attachments(item.case, suite.base_dir, settings.agent.allow_outside_paths)
    return load_case((suite.base_dir / item.case_path).resolve(), settings.agent.allow_outside_paths)


def _substitute(arguments: dict[str, Any], previous: Evidence | None) -> dict[str, Any]:
    resolved = {}
    for key, value in arguments.items():
        if isinstance(value, str) and value.startswith("$prev."):
            if previous is None:
                raise MedagentError(f"argument {key}={value}: there is no previous step")
            resolved[key] = previous.payload.get(value[len("$prev."):])
        else:
            resolved[key] = value
    return resolved


async def _run_steps(item: SuiteItem, loaded: LoadedCase, settings: Settings, run_dir: Path, trace: TraceRecorder) -> Result:
    """direct / pipeline mode: fixed tool calls, no planner, the same validation and evidence ids."""
    from medagent.agent.reporter import TemplateReporter

    registry = Registry(settings)
    ctx = ToolContext(loaded.case, loaded.case_dir, run_dir / "artifacts" / item.id, settings)
    ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
    evidence: list[Evidence] = []
    calls: list[ToolCall] = []
    previous: Evidence | None = None
    for number, step in enumerate(item.steps, start=1):
        call = ToolCall(call_id=f"C{number}", tool=step.tool, arguments=_substitute(step.arguments, previous), reason=f"{item.mode} step {number}")
        args, reason = registry.validate(call, loaded.case)
        trace.emit(ToolCallEvent, "act", call_id=call.call_id, tool=call.tool, arguments=call.arguments, origin=call.origin,
                   reason=call.reason, rejected=reason is not None, rejection=reason)
        calls.append(call)
        if reason is not None:
            raise MedagentError(f"step {number} rejected: {reason}")
        t0 = trace.now()
        try:
            drafts = await asyncio.to_thread(registry.tools[call.tool].run, args, ctx)
        except MedagentError as exc:
            drafts = [EvidenceDraft(summary=f"{call.tool} could not examine the input: {exc}", error=True)]
        t1 = trace.now()
        ids = []
        for draft in drafts:
            item_evidence = Evidence(id=f"E{len(evidence) + 1}", tool=call.tool, call_id=call.call_id, **draft.model_dump())
            evidence.append(item_evidence)
            ids.append(item_evidence.id)
        trace.emit(ToolResultEvent, "act", call_id=call.call_id, tool=call.tool, evidence=ids, error=any(d.error for d in drafts),
                   started=t0, finished=t1, seconds=round(t1 - t0, 6))
        previous = evidence[-1] if ids else None
    differential, note, findings, report, grounding = TemplateReporter().report(loaded.case, evidence, [])
    result = Result(case_id=loaded.case.id, question=loaded.case.question, differential=differential, differential_note=note,
                    findings=findings, report=report, evidence=evidence, calls=calls, grounding=grounding)
    trace.emit(ResultEvent, "report", differential=[c.model_dump() for c in differential], grounding=grounding.model_dump(),
               evidence_count=len(evidence), timings={"total_s": trace.now()})
    return result


async def run_item(item: SuiteItem, suite: Suite, settings: Settings, run_dir: Path) -> dict[str, Any]:
    """Run one item in a fresh state; write its trace and result; return its score line."""
    trace_path = run_dir / "traces" / f"{item.id}.jsonl"
    trace_path.unlink(missing_ok=True)
    started = time.monotonic()
    line: dict[str, Any] = {"id": item.id, "mode": item.mode, "group": item.group}
    try:
        loaded = _load_item_case(item, suite, settings)
        trace = TraceRecorder(loaded.case.id, trace_path)
        try:
            if item.mode == "agent":
                from medagent.agent.api import run_loaded

                result, _ = await run_loaded(loaded, settings, run_dir / "artifacts" / item.id, trace)
            elif item.mode in ("direct", "pipeline"):
                result = await _run_steps(item, loaded, settings, run_dir, trace)
            else:
                raise MedagentError("dialogue items need `medagent chat` sessions, which are not built yet")
        finally:
            trace.close()
        (run_dir / "results" / f"{item.id}.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
        line.update(score_events(read_trace(trace_path), item.expected))
    except MedagentError as exc:
        line.update(completed=False, failure=str(exc))
    line["wall_s"] = round(time.monotonic() - started, 3)
    return line


def _read_scores(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_suite(
    suite_name: str,
    out: Path | None = None,
    limit: int | None = None,
    workers: int = 1,
    data_dir: Path | None = None,
    config: Path | None = None,
    settings: Settings | None = None,
) -> str:
    settings = settings or load_settings(config)
    suite = load_suite(suite_name, shared_data_dir(data_dir), limit)
    limit = limit if limit is not None else suite.default_limit
    items = suite.items[:limit] if limit is not None else suite.items
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = out or Path("runs") / f"{suite.name}-{stamp}"
    for sub in ("traces", "results"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    scores_path = run_dir / "scores.jsonl"
    done = {s["id"] for s in _read_scores(scores_path)}
    todo = [item for item in items if item.id not in done]
    (run_dir / "run.json").write_text(json.dumps({
        "suite": suite.name, "items": len(items), "limit": limit, "workers": workers,
        "settings": settings.model_dump(mode="json"), "versions": _versions(), "started": stamp,
    }, indent=2), encoding="utf-8")

    from rich.progress import Progress

    lock = threading.Lock()

    async def run_all() -> None:
        semaphore = asyncio.Semaphore(workers)
        with Progress(transient=False) as progress:
            task = progress.add_task(f"{suite.name}", total=len(items), completed=len(items) - len(todo))

            async def one(item: SuiteItem) -> None:
                async with semaphore:
                    line = await run_item(item, suite, settings, run_dir)
                with lock, scores_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")
                progress.update(task, advance=1, description=f"{suite.name} ({line['wall_s']:.1f}s/item)")

            await asyncio.gather(*(one(item) for item in todo))

    asyncio.run(run_all())
    wanted = {item.id for item in items}
    scores = [s for s in _read_scores(scores_path) if s["id"] in wanted]
    summary = aggregate(scores)
    report = _report(suite.name, summary, scores)
    (run_dir / "report.md").write_text(report, encoding="utf-8")
    return report + f"\nrun folder: {run_dir}\n"


def _report(name: str, summary: dict[str, Any], scores: list[dict[str, Any]]) -> str:
    lines = [f"# medagent eval — {name}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in summary.items()]
    failures = [s for s in scores if s.get("failure") or s.get("forbidden_called") or s.get("required_recall", 1) < 1]
    if failures:
        lines += ["", "## Items that failed a check", ""]
        for s in failures:
            why = s.get("failure") or (f"called forbidden {s['forbidden_called']}" if s.get("forbidden_called") else f"required-tool recall {s.get('required_recall')}")
            lines.append(f"- {s['id']}: {why}")
    return "\n".join(lines) + "\n"


def score_traces(traces: Path, suite_name: str | None = None, data_dir: Path | None = None) -> str:
    folder = traces / "traces" if (traces / "traces").is_dir() else traces
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise MedagentError(f"{traces}: no trace .jsonl files found")
    expected = {}
    if suite_name is not None:
        suite = load_suite(suite_name, shared_data_dir(data_dir), None)
        expected = {item.id: item.expected for item in suite.items}
    from medagent.evals.suite import Expected

    scores = []
    for file in files:
        line = {"id": file.stem, **score_events(read_trace(file), expected.get(file.stem, Expected()))}
        scores.append(line)
    return _report(f"scored {len(files)} traces from {folder}", aggregate(scores), scores)
