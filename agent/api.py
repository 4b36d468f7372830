"""The Python API: `solve(case) -> Result` and `asolve`, the same path the CLI takes.

Models load into a `ModelPool`: `solve`/`asolve` use the process's pool unless given one, so repeated
solves stay warm; `process_pool().close()` frees what they loaded."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medagent.agent.graph import build_graph
from medagent.agent.planner import RulePlanner
from medagent.agent.reporter import TemplateReporter
from medagent.agent.state import Planner, RunContext
from medagent.tools.config import Settings, load_settings
from medagent.tools.contracts import Case, Result
from medagent.tools.intake import LoadedCase, intake
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Registry, Tool
from medagent.tools.trace import ModelsEvent, TraceRecorder

_GRAPH = None
_PROCESS_POOL = ModelPool()  # the Python API's models, shared by its solves in this process


def process_pool() -> ModelPool:
    """The pool `solve`/`asolve` use when not given one; close it to free their models."""
    return _PROCESS_POOL


def graph():
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_graph()
    return _GRAPH


def _use_llm(settings: Settings, choice: str) -> bool:
    """`auto` means the LLM exactly when `[llm] preset` (or backend) names one; `none` keeps the rules."""
    if choice == "rule":
        return False
    configured = settings.llm.configured
    if choice == "llm" and not configured:
        from medagent.tools.errors import ConfigError

        raise ConfigError("[agent] planner = 'llm' but [llm] preset is 'none': choose a preset such as 'offline-cpu'")
    return configured


def make_backend_if_configured(settings: Settings, pool: ModelPool | None = None) -> Any:
    """The one LLM backend a run's planner and reporter share, or None when the rules run the case."""
    if not _use_llm(settings, settings.agent.planner):
        return None
    from medagent.agent.llm import make_backend

    return make_backend(settings, pool)


def backend_or_rules(settings: Settings, pool: ModelPool | None = None) -> tuple[Any, Settings, str | None]:
    """(backend, settings, note) for one run. With `planner = "auto"`, an LLM that cannot run here (a
    native backend whose probe died, a missing model file) leaves the run to the rules: the settings
    returned say so and `note` is the line that result.json and report.md carry. With `planner = "llm"`
    the same failure is an error (exit code 1): the user asked for the LLM and nothing else."""
    from medagent.tools.errors import UnavailableError

    try:
        return make_backend_if_configured(settings, pool), settings, None
    except UnavailableError as exc:
        if settings.agent.planner == "llm":
            exc.exit_code = 1
            raise
        fallback = settings.model_copy(deep=True)
        fallback.agent.planner = "rule"
        return None, fallback, f"{exc}; planned with rules"


def prepare_run(settings: Settings, tools: list[Tool] | None = None, on_progress: Callable[[str], None] | None = None,
                pool: ModelPool | None = None) -> tuple[Any, Settings, Registry, list[str]]:
    """What every run (a solve, a chat turn) needs before its graph starts: the one-time builds done (or the
    tools needing them blocked), the LLM backend or the rules, the registry, and the notes the report
    carries about either; what they load goes into `pool`. Returns (backend, settings, registry, notes)."""
    from medagent.agent.setup import ensure_built

    pool = pool if pool is not None else ModelPool()
    blocked = ensure_built(settings, on_progress, pool)
    backend, settings, note = backend_or_rules(settings, pool)
    if note and on_progress is not None:
        on_progress(note)
    registry = Registry(settings, placed_tools(settings, tools), pool)
    registry.block(blocked)
    notes = ([note] if note else []) + [f"{tool} was not run: {reason}" for tool, reason in blocked.items()]
    return backend, settings, registry, notes


def placed_tools(settings: Settings, tools: list[Tool] | None = None) -> list[Tool] | None:
    """The run's tools with those `[serve] remote_tools` names running on the Ray cluster (agent/scale.py);
    `tools` unchanged (None: the registry's own) when no tool is remote."""
    if not settings.serve.remote_tools:
        return tools
    from medagent.agent.scale import place
    from medagent.tools.registry import all_tools

    return place(settings, tools if tools is not None else all_tools())


def make_planner(settings: Settings, trace: TraceRecorder | None = None, backend: Any = None,
                 pool: ModelPool | None = None):
    """The configured planner: the LLM planner when an LLM is configured, else the rule planner."""
    if not _use_llm(settings, settings.agent.planner):
        return RulePlanner()
    from medagent.agent.llm import make_backend
    from medagent.agent.llm_planner import LLMPlanner

    return LLMPlanner(backend or make_backend(settings, pool), settings, trace, pool)


def make_reporter(settings: Settings, trace: TraceRecorder | None = None, backend: Any = None,
                  on_text: Callable[[str], None] | None = None, pool: ModelPool | None = None):
    """The LLM reporter (checked by the grounding checker) when an LLM is configured, else the template.
    `on_text` receives the LLM's report sentences as they are written."""
    if not _use_llm(settings, settings.agent.planner) or not settings.llm.reporter:
        return TemplateReporter()
    from medagent.agent.llm import make_backend
    from medagent.agent.llm_reporter import LLMReporter

    return LLMReporter(backend or make_backend(settings, pool), settings, trace, on_text=on_text, pool=pool)


def make_run(settings: Settings, trace: TraceRecorder, artifacts_dir: Path, tools: list[Tool] | None = None,
             on_progress: Callable[[str], None] | None = None, on_text: Callable[[str], None] | None = None,
             planner: Planner | None = None, coverage_guard: bool = True,
             pool: ModelPool | None = None) -> tuple[RunContext, Any]:
    """The context of one run of the graph (a solve, a chat turn, an eval item) and the LLM backend it opened
    (None with the rules; the caller closes it): builds done, backend or rules, registry, planner, reporter.
    What they load goes into `pool` (the caller owns it and closes it)."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    pool = pool if pool is not None else ModelPool()
    backend, settings, registry, notes = prepare_run(settings, tools, on_progress, pool)
    run = RunContext(
        settings=settings,
        registry=registry,
        trace=trace,
        artifacts_dir=artifacts_dir,
        planner=planner or make_planner(settings, trace, backend, pool),
        reporter=make_reporter(settings, trace, backend, on_text, pool),
        on_progress=on_progress,
        notes=notes,
        coverage_guard=coverage_guard,
        pool=pool,
    )
    run.models.update({name: tool.version(settings) for name, tool in registry.tools.items() if registry.unavailable_reason(name) is None})
    return run, backend


async def run_loaded(
    loaded: LoadedCase,
    settings: Settings,
    artifacts_dir: Path,
    trace: TraceRecorder | None = None,
    tools: list[Tool] | None = None,
    on_progress: Callable[[str], None] | None = None,
    planner: Planner | None = None,
    coverage_guard: bool = True,
    pool: ModelPool | None = None,
) -> tuple[Result, TraceRecorder]:
    """Run the case graph once. `planner` overrides the configured one (any object of the Planner protocol,
    agent/state.py); `coverage_guard` False leaves its calls alone (a scripted planner). Models load into
    `pool` (a process serving many runs passes its own); without one, the run's own pool is closed when it ends."""
    trace = trace or TraceRecorder(loaded.case.id)
    shared = pool is not None
    pool = pool if pool is not None else ModelPool()
    backend = None
    try:
        run, backend = make_run(settings, trace, artifacts_dir, tools, on_progress, planner=planner,
                                coverage_guard=coverage_guard, pool=pool)
        state = await graph().ainvoke(
            {"case": loaded.case, "case_dir": str(loaded.case_dir), "warnings": loaded.warnings},
            config={"configurable": {"run": run}, "recursion_limit": 4 * run.settings.agent.max_steps + 10},
        )
    finally:
        if backend is not None:  # HTTP backends hold a connection pool
            await backend.aclose()
        record_models(trace, pool, shared)
        if not shared:
            pool.close()
    return state["result"], trace


def record_models(trace: TraceRecorder, pool: ModelPool, shared: bool) -> None:
    """The trace's last event: what the pool holds, with memory estimates (result.json stays as it was)."""
    loaded = [entry.model_dump() for entry in pool.loaded()]
    trace.emit(ModelsEvent, "end", loaded=loaded, total_bytes=sum(e["bytes"] or 0 for e in loaded), shared=shared)


async def asolve(
    case: Case | Path | str,
    case_dir: Path | None = None,
    settings: Settings | None = None,
    artifacts_dir: Path | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    pool: ModelPool | None = None,
) -> Result:
    """Solve one case. `case` is a Case (attachment paths relative to `case_dir`) or a case.json path.
    With `out`, result.json, report.md, trace.jsonl and artifacts/ are written there as `medagent solve -o`
    writes them (refused before any work if `out` is not a folder medagent may write). Without `out`, figures
    go to `artifacts_dir`, or to a temporary folder removed when the solve returns. Models load into `pool`,
    by default the process's (`process_pool()`), and stay for the next solve."""
    pool = pool if pool is not None else process_pool()
    settings = settings or load_settings()
    loaded = intake(case, settings, case_dir)
    if out is None:
        if artifacts_dir is not None:
            return (await run_loaded(loaded, settings, artifacts_dir, pool=pool))[0]
        # Nowhere to keep figures: they go to a temporary folder that is removed when the solve returns
        # (it was left in /tmp on every call, unreachable: the result does not name it).
        with tempfile.TemporaryDirectory(prefix=f"medagent-{loaded.case.id}-") as scratch:
            return (await run_loaded(loaded, settings, Path(scratch), pool=pool))[0]
    from medagent.agent.outputs import output_folder, write_outputs

    inputs = [loaded.case_dir / a.path for a in loaded.case.attachments] + ([Path(case)] if not isinstance(case, Case) else [])
    with output_folder(Path(out), overwrite, inputs, "solve (Python API)") as staging:
        trace = TraceRecorder(loaded.case.id, staging / "trace.jsonl")
        try:
            result, _ = await run_loaded(loaded, settings, staging / "artifacts", trace, pool=pool)
        finally:
            trace.close()
        write_outputs(staging, result, loaded.case)
    return result


def solve(
    case: Case | Path | str,
    case_dir: Path | None = None,
    settings: Settings | None = None,
    artifacts_dir: Path | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    pool: ModelPool | None = None,
) -> Result:
    return asyncio.run(asolve(case, case_dir, settings, artifacts_dir, out, overwrite, pool))
