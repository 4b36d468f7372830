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
from medagent.agent.state import RunContext
from medagent.tools.config import Settings, load_settings
from medagent.tools.contracts import Case, Result
from medagent.tools.intake import LoadedCase, load_case, resolve_attachments
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
    configured = settings.llm.preset != "none" or settings.llm.backend is not None
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
    registry = Registry(settings, tools, pool)
    registry.block(blocked)
    notes = ([note] if note else []) + [f"{tool} was not run: {reason}" for tool, reason in blocked.items()]
    return backend, settings, registry, notes


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


async def run_loaded(
    loaded: LoadedCase,
    settings: Settings,
    artifacts_dir: Path,
    trace: TraceRecorder | None = None,
    tools: list[Tool] | None = None,
    on_progress: Callable[[str], None] | None = None,
    planner: Any = None,
    pool: ModelPool | None = None,
) -> tuple[Result, TraceRecorder]:
    """Run the case graph once. `planner` overrides the configured one (e.g. a custom planner object with
    `name`, `plan(case, tools, evidence, calls)` and `reflect(...)`). Models load into `pool` (a process
    serving many runs passes its own); without one, the run's own pool is closed when it ends."""
    trace = trace or TraceRecorder(loaded.case.id)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    shared = pool is not None
    pool = pool if pool is not None else ModelPool()
    backend = None
    try:
        backend, settings, registry, notes = prepare_run(settings, tools, on_progress, pool)
        run = RunContext(
            settings=settings,
            registry=registry,
            trace=trace,
            artifacts_dir=artifacts_dir,
            planner=planner or make_planner(settings, trace, backend, pool),
            reporter=make_reporter(settings, trace, backend, pool=pool),
            on_progress=on_progress,
            notes=notes,
            pool=pool,
        )
        run.models.update({name: tool.version(settings) for name, tool in run.registry.tools.items() if run.registry.unavailable_reason(name) is None})
        state = await graph().ainvoke(
            {"case": loaded.case, "case_dir": str(loaded.case_dir), "warnings": loaded.warnings},
            config={"configurable": {"run": run}, "recursion_limit": 4 * settings.agent.max_steps + 10},
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


def _load(case: Case | Path | str, case_dir: Path | None, settings: Settings) -> LoadedCase:
    from medagent.tools.safeio import configure

    configure(settings.agent)  # the config's intake limits, as the CLI has them
    if isinstance(case, Case):
        return resolve_attachments(case, Path(case_dir or Path.cwd()), settings.agent.allow_outside_paths)
    return load_case(Path(case), settings.agent.allow_outside_paths)


async def asolve(
    case: Case | Path | str,
    case_dir: Path | None = None,
    settings: Settings | None = None,
    artifacts_dir: Path | None = None,
    pool: ModelPool | None = None,
) -> Result:
    """Solve one case. `case` is a Case (attachment paths relative to `case_dir`) or a case.json path.
    Models load into `pool`, by default the process's (`process_pool()`), and stay for the next solve."""
    settings = settings or load_settings()
    loaded = _load(case, case_dir, settings)
    if artifacts_dir is None:
        artifacts_dir = Path(tempfile.mkdtemp(prefix=f"medagent-{loaded.case.id}-"))
    result, _ = await run_loaded(loaded, settings, artifacts_dir, pool=pool if pool is not None else process_pool())
    return result


def solve(
    case: Case | Path | str,
    case_dir: Path | None = None,
    settings: Settings | None = None,
    artifacts_dir: Path | None = None,
    pool: ModelPool | None = None,
) -> Result:
    return asyncio.run(asolve(case, case_dir, settings, artifacts_dir, pool))
