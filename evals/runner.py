"""`medagent eval run` / `eval score`: one runner for every suite and mode.

A run folder holds run.json (suite, settings, versions, tools available), traces/<item>.jsonl,
results/<item>.json, scores.jsonl (one line per finished item: a restart skips those), report.md,
report.html (self-contained, plots embedded) and plots/*.png.

Items whose `expected.options` is set are multiple choice: the configured LLM answers them
directly (one constrained completion); with no LLM configured they fail with that reason, and
no answer is ever guessed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as metadata
import json
import platform
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medagent.evals.scoring import aggregate, compare_to_baselines, score_events, with_graph_ids
from medagent.evals.suite import Expected, Suite, SuiteItem, load_suite, shared_data_dir
from medagent.tools.config import Settings, load_settings
from medagent.tools.contracts import Evidence, Result, ToolCall
from medagent.tools.errors import CaseError, ConfigError, MedagentError
from medagent.tools.intake import LoadedCase, intake
from medagent.tools.payloads import field_value, payload_models, payload_of
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Registry
from medagent.tools.trace import (
    ErrorEvent,
    LLMTurnEvent,
    ResultEvent,
    TraceRecorder,
    read_trace,
)


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
        return intake(item.case, settings, suite.base_dir)
    return intake((suite.base_dir / item.case_path).resolve(), settings)


def prev_value(previous: Evidence, key: str) -> Any:
    """A field of the previous step's payload, read with its tool's model (None for an error item)."""
    model = payload_models().get(previous.tool)
    if previous.error or model is None:
        return None
    return field_value(payload_of(previous, model), key)


def _substitute(arguments: dict[str, Any], previous: Evidence | None) -> dict[str, Any]:
    resolved = {}
    for key, value in arguments.items():
        if isinstance(value, str) and value.startswith("$prev."):
            if previous is None:
                raise MedagentError(f"argument {key}={value}: there is no previous step")
            resolved[key] = prev_value(previous, value[len("$prev."):])
        else:
            resolved[key] = value
    return resolved


class ScriptedPlanner:
    """An item's fixed steps as a planner, so `direct` and `pipeline` items run through the same graph and
    executor as `solve` (validation, timeouts, crash → error evidence, numbering, trace). One step per turn,
    so a step's `$prev.KEY` reads the evidence of the step before; a rejected step ends the script."""

    name = "scripted"

    def __init__(self, item: SuiteItem) -> None:
        self.item = item

    def plan(self, case, tools, evidence: list[Evidence], calls: list[ToolCall]) -> list[ToolCall]:  # noqa: ANN001
        return self._next(evidence, calls)

    reflect = plan

    def _next(self, evidence: list[Evidence], calls: list[ToolCall]) -> list[ToolCall]:
        number = len(calls) + 1
        if number > len(self.item.steps) or (calls and not any(e.call_id == calls[-1].call_id for e in evidence)):
            return []
        previous = evidence[-1] if calls else None
        step = self.item.steps[number - 1]
        return [ToolCall(call_id=f"C{number}", tool=step.tool, arguments=_substitute(step.arguments, previous),
                         reason=f"{self.item.mode} step {number}")]


async def _run_steps(item: SuiteItem, loaded: LoadedCase, settings: Settings, run_dir: Path, trace: TraceRecorder,
                     pool: ModelPool) -> Result:
    """direct / pipeline mode: the item's fixed calls, the template reporter, no LLM and no coverage guard."""
    from medagent.agent.api import run_loaded

    scripted = settings.model_copy(deep=True)
    scripted.agent.planner = "rule"
    scripted.agent.max_steps = max(scripted.agent.max_steps, len(item.steps))
    result, _ = await run_loaded(loaded, scripted, run_dir / "artifacts" / item.id, trace,
                                 planner=ScriptedPlanner(item), coverage_guard=False, pool=pool)
    for number, event in enumerate((e for e in trace.events if e.event == "tool_call"), start=1):
        if event.rejected:
            raise MedagentError(f"step {number} rejected: {event.rejection}")
    return result


LETTERS = "ABCDEFGHIJ"


def choice_prompt(question: str, options: list[str]) -> list[dict[str, str]]:
    """The one prompt multiple-choice items get: the question, lettered options, answer with a letter."""
    lettered = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))
    return [
        {"role": "system", "content": "You are a medical expert answering an exam question. Reply with JSON "
                                      '{"answer": "<letter>"} naming the single best option.'},
        {"role": "user", "content": f"{question.strip()}\n\nOptions:\n{lettered}"},
    ]


def _make_backend(settings: Settings, pool: ModelPool) -> Any:
    """The LLM backend; a local model loads once per pool (per item would dominate the run time)."""
    try:
        from medagent.agent.llm import make_backend

        return make_backend(settings, pool)
    except (ConfigError, ImportError) as exc:
        raise MedagentError(f"no LLM configured, so this multiple-choice item was not answered ({exc}); "
                            "set [llm] preset in medagent.toml, e.g. preset = \"offline-cpu\"") from exc


async def _run_choice(item: SuiteItem, loaded: LoadedCase, settings: Settings, trace: TraceRecorder, pool: ModelPool) -> None:
    """Multiple choice: one schema-constrained LLM completion; the chosen letter goes in the result event."""
    backend = await asyncio.to_thread(_make_backend, settings, pool)
    try:
        await _ask_choice(item, loaded, backend, trace)
    finally:
        await backend.aclose()  # an HTTP backend's connections; a local model stays in the pool


async def _ask_choice(item: SuiteItem, loaded: LoadedCase, backend: Any, trace: TraceRecorder) -> None:
    options = item.expected.options or []
    letters = list(LETTERS[: len(options)])
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": letters}}, "required": ["answer"]}
    messages = choice_prompt(loaded.case.question if not loaded.case.history else f"{loaded.case.history}\n\n{loaded.case.question}", options)
    reply = await backend.chat(messages, schema=schema, max_tokens=16)
    trace.emit(LLMTurnEvent, "answer", role="answer", model=reply.model, prompt_tokens=reply.prompt_tokens,
               completion_tokens=reply.completion_tokens, seconds=reply.seconds, messages=messages, completion=reply.text)
    try:
        letter = str(reply.json().get("answer", "")).strip().upper()[:1]
    except (MedagentError, AttributeError):
        match = re.search(r"\b([A-J])\b", reply.text)
        letter = match.group(1) if match else ""
    choice = letters.index(letter) if letter in letters else None
    if choice is None:
        trace.emit(ErrorEvent, "answer", message=f"the LLM named no option: {reply.text[:80]!r}")
    trace.emit(ResultEvent, "answer", differential=[], grounding={"status": "not_run"}, evidence_count=0,
               timings={"total_s": trace.now()}, choice=choice)


def item_extras(item: SuiteItem) -> dict[str, Any]:
    """Fields of the item (not of its trace) that the report and the robustness comparison need."""
    extras: dict[str, Any] = {}
    for key in ("category", "baseline"):
        if item.meta.get(key) is not None:
            extras[key] = item.meta[key]
    if "peer_rank" in item.meta:  # a peer method's rank of the expected answer on the same case (None: not ranked)
        extras["peer_rank"] = item.meta["peer_rank"]
        extras["peer"] = item.meta.get("peer", "peer baseline")
    if item.meta.get("expect") == "refusal":
        extras["expect_refusal"] = True
    if item.meta.get("subset"):
        extras["subset"] = item.meta["subset"]
    return extras


async def run_item(item: SuiteItem, suite: Suite, settings: Settings, run_dir: Path, available: set[str] | None = None,
                   pool: ModelPool | None = None) -> dict[str, Any]:
    """Run one item in a fresh state; write its trace and result; return its score line. Models load into
    `pool` (the suite's, shared by its items); without one, into a pool of the item's own, closed after it.

    A clear project error (bad input, missing LLM) is recorded as the item's failure; any other
    exception is recorded as a crash, so one item can never stop a run."""
    if pool is None:
        with ModelPool() as own:
            return await run_item(item, suite, settings, run_dir, available, own)
    trace_path = run_dir / "traces" / f"{item.id}.jsonl"
    trace_path.unlink(missing_ok=True)
    started = time.monotonic()
    line: dict[str, Any] = {"id": item.id, "mode": item.mode, "group": item.group, **item_extras(item)}
    if available is not None and item.expected.required_tools:
        line["unavailable_required"] = sorted(set(item.expected.required_tools) - available)
    try:
        try:
            loaded = _load_item_case(item, suite, settings)
        except CaseError as exc:
            line["refused"] = True
            raise exc
        trace = TraceRecorder(loaded.case.id, trace_path)
        try:
            if item.expected.options is not None:
                await _run_choice(item, loaded, settings, trace, pool)
                result = None
            elif item.mode == "agent":
                from medagent.agent.api import run_loaded

                result, _ = await run_loaded(loaded, settings, run_dir / "artifacts" / item.id, trace, pool=pool)
            elif item.mode in ("direct", "pipeline"):
                result = await _run_steps(item, loaded, settings, run_dir, trace, pool)
            else:
                from medagent.evals.dialogue import run_dialogue

                result, dialogue_metrics = await run_dialogue(item, settings, run_dir, trace_path, pool)
                line.update(dialogue_metrics)
        finally:
            trace.close()
        if result is not None:
            (run_dir / "results" / f"{item.id}.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
        expected = await asyncio.to_thread(with_graph_ids, item.expected, settings, pool)
        line.update(score_events(read_trace(trace_path), expected))
    except MedagentError as exc:
        line.update(completed=False, failure=str(exc))
    except Exception as exc:  # noqa: BLE001  (a crash is a finding of the evaluation, not the end of the run)
        line.update(completed=False, crashed=True, failure=f"crash: {type(exc).__name__}: {exc}")
    line["wall_s"] = round(time.monotonic() - started, 3)
    return line


def read_scores(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _status(line: dict[str, Any]) -> str:
    from medagent.evals.scoring import failure_reasons

    reasons = failure_reasons(line)
    if line.get("expect_refusal") and not reasons:
        return f"[green]handled as expected[/green]: {(line.get('failure') or 'error evidence')[:160]}"
    if line.get("crashed") or line.get("failure"):
        return f"[red]{'; '.join(reasons) or 'failed'}[/red]: {line.get('failure', '')[:160]}"
    return f"[yellow]{'; '.join(reasons)}[/yellow]" if reasons else "[green]pass[/green]"


def run_suite(
    suite_name: str,
    out: Path | None = None,
    limit: int | None = None,
    workers: int = 1,
    data_dir: Path | None = None,
    config: Path | None = None,
    settings: Settings | None = None,
    quiet: bool = False,
    item_ids: list[str] | None = None,
    ray_address: str | None = None,
) -> str:
    """Run a suite (built-in name or JSONL), resuming a run folder; write scores and the report.

    Returns the Markdown summary. `limit` None takes the suite's default limit; 0 runs every item.
    With `ray_address` the items run on that Ray cluster, `workers` at a time (one actor each; evals/cluster.py),
    into the same run folder with the same scores."""
    settings = settings or load_settings(config)
    suite = load_suite(suite_name, shared_data_dir(data_dir), limit)
    if suite.settings:
        current = settings.model_dump()
        settings = settings.model_validate({**current, **{k: {**current[k], **v} for k, v in suite.settings.items()}})
    limit = limit if limit is not None else suite.default_limit
    if item_ids:
        unknown = sorted(set(item_ids) - {item.id for item in suite.items})
        if unknown:
            raise MedagentError(f"suite {suite.name} has no item {', '.join(unknown)}")
        items = [item for item in suite.items if item.id in set(item_ids)]
    else:
        items = suite.items[:limit] if limit else suite.items
    # A robustness item is judged against its baseline: run the baseline too, first.
    chosen = {item.id for item in items}
    baselines = [i for i in suite.items if i.id not in chosen and i.id in {x.meta.get("baseline") for x in items}]
    items = baselines + list(items)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out or Path("runs") / f"{suite.name}-{stamp}"
    for sub in ("traces", "results"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    scores_path = run_dir / "scores.jsonl"
    done = {s["id"] for s in read_scores(scores_path)}
    todo = [item for item in items if item.id not in done]
    pool = ModelPool()  # the suite's models, loaded once for all its items
    from medagent.agent.api import placed_tools

    registry = Registry(settings, placed_tools(settings), pool=pool)
    available = {name for name in registry.tools if registry.unavailable_reason(name) is None}
    (run_dir / "run.json").write_text(json.dumps({
        "suite": suite.name, "suite_source": str(Path(suite_name).resolve()) if Path(suite_name).exists() else suite_name,
        "description": suite.description, "items": len(items), "limit": limit,
        "default_limit": suite.default_limit, "suite_size": len(suite.items), "workers": workers, "ray": ray_address,
        "settings": settings.model_dump(mode="json"), "versions": _versions(), "started": stamp,
        "tools_available": sorted(available),
        "tools_unavailable": {name: registry.unavailable_reason(name) for name in sorted(set(registry.tools) - available)},
    }, indent=2, default=str), encoding="utf-8")

    from rich.console import Console
    from rich.progress import Progress

    lock = threading.Lock()
    console = Console(stderr=True, quiet=quiet)
    if limit and limit < len(suite.items):
        console.print(f"{suite.name}: running {len(items)} of {len(suite.items)} items (--limit {limit}; --limit 0 runs all)")

    def record(progress: Progress, task: Any, item: SuiteItem, line: dict[str, Any]) -> None:
        with lock, scores_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
        progress.console.print(f"{item.id}: {line['wall_s']:.1f} s  {_status(line)}")
        progress.update(task, advance=1, description=f"{suite.name} (last {line['wall_s']:.1f} s/item)")

    async def run_all(progress: Progress, task: Any) -> None:
        semaphore = asyncio.Semaphore(workers)

        async def one(item: SuiteItem) -> None:
            async with semaphore:
                line = await run_item(item, suite, settings, run_dir, available, pool)
            record(progress, task, item, line)

        await asyncio.gather(*(one(item) for item in todo))

    try:
        with Progress(transient=False, console=console) as progress:
            task = progress.add_task(f"{suite.name}", total=len(items), completed=len(items) - len(todo))
            if ray_address:
                from medagent.evals.cluster import run_on_cluster

                run_on_cluster(ray_address, todo, suite, settings, run_dir, available, workers,
                               lambda item, line: record(progress, task, item, line))
            else:
                asyncio.run(run_all(progress, task))
    finally:
        pool.close()
    wanted = {item.id for item in items}
    everything = read_scores(scores_path)
    # Cross-item metrics (robustness baselines) go into scores.jsonl too, rewritten whole and atomically.
    compare_to_baselines(everything)
    partial = scores_path.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(s, default=str) + "\n" for s in everything), encoding="utf-8")
    partial.replace(scores_path)
    scores = [s for s in everything if s["id"] in wanted]
    return finish(run_dir, suite.name, scores) + f"\nrun folder: {run_dir}\n"


def finish(folder: Path, title: str, scores: list[dict[str, Any]]) -> str:
    """Cross-item metrics, then report.md / report.html / plots in `folder`; returns the summary."""
    from medagent.evals.report import write_report

    compare_to_baselines(scores)
    write_report(folder, title, scores)
    return summary_markdown(title, aggregate(scores))


def summary_markdown(title: str, summary: dict[str, Any]) -> str:
    lines = [f"# medagent eval — {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in summary.items()]
    return "\n".join(lines) + "\n"


def score_traces(traces: Path, suite_name: str | None = None, data_dir: Path | None = None, out: Path | None = None,
                 config: Path | None = None, settings: Settings | None = None) -> str:
    """Score trace files from any run (optionally against a suite's expectations); write a report to `out`."""
    folder = traces / "traces" if (traces / "traces").is_dir() else traces
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise MedagentError(f"{traces}: no trace .jsonl files found")
    items: dict[str, SuiteItem] = {}
    settings = settings or load_settings(config)
    pool = ModelPool()  # the graph the answer labels are matched through, read once
    if suite_name is not None:
        suite = load_suite(suite_name, shared_data_dir(data_dir), None)
        items = {item.id: item for item in suite.items}
    scores = []
    for file in files:
        item = items.get(file.stem)
        line: dict[str, Any] = {"id": file.stem}
        if item is not None:
            line.update(group=item.group, mode=item.mode, **item_extras(item))
        try:
            events = read_trace(file)
        except (ValueError, json.JSONDecodeError) as exc:
            raise MedagentError(f"{file}: not a medagent trace ({exc})") from exc
        line.update(score_events(events, with_graph_ids(item.expected, settings, pool) if item else Expected()))
        line["wall_s"] = line["seconds"]
        scores.append(line)
    title = f"{len(files)} traces from {folder}" + (f" against suite {suite_name}" if suite_name else "")
    if out is None:
        compare_to_baselines(scores)
        return summary_markdown(title, aggregate(scores))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "scores.jsonl").open("w", encoding="utf-8") as handle:
        for line in scores:
            handle.write(json.dumps(line, default=str) + "\n")
    return finish(out, title, scores) + f"\nreport: {out / 'report.md'}\n"


def export_sft(source: Path, out: Path, suite_name: str | None = None, data_dir: Path | None = None,
               config: Path | None = None) -> str:
    """Training examples from traces through the ONE converter, medagent.agent.sft.convert (the planner recipe's).

    Steps planned without an LLM turn in the trace (rule planner) need the case and the tool catalogue to
    rebuild the prompt: the cases come from the suite (`suite_name`, else the run folder's run.json)."""
    folder = source / "traces" if (source / "traces").is_dir() else source
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else [folder]
    if not files or not all(f.is_file() for f in files):
        raise MedagentError(f"{source}: no trace .jsonl files found")
    try:
        from medagent.agent.sft import convert
    except ImportError as exc:
        raise MedagentError("the trace → SFT converter (medagent.agent.sft, owned by the planner recipe) is not "
                            f"installed in this build ({exc})") from exc
    settings = load_settings(config)
    run_file = source / "run.json"
    if suite_name is None and run_file.is_file():
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
        suite_name = recorded.get("suite_source") or recorded.get("suite")
    cases = {}
    if suite_name is not None:
        try:
            suite = load_suite(suite_name, shared_data_dir(data_dir), None)
        except MedagentError:
            suite = None  # a user suite file that moved: LLM-planned steps still convert
        for item in suite.items if suite else []:
            try:
                case = _load_item_case(item, suite, settings).case
            except MedagentError:
                continue
            cases[case.id] = case
    registry = Registry(settings)
    tools = [tool for name, tool in registry.tools.items() if registry.unavailable_reason(name) is None]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = convert(files, out, cases, tools)
    return f"wrote {written} training examples from {len(files)} traces to {out}"
