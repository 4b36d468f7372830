"""One-time builds, done in set-up rather than inside the first solve.

The offline defaults need files that are built once per machine and cached under the cache root:
the assembled GGUF (and the verdict of its llama.cpp probe), the knowledge graph, the linker's dense
index and the assembled Whisper model. `medagent setup` (and `make demo` / `make test`) builds them
with a progress line each. A solve that finds one missing builds it in a child process bounded by
`[cache] build_timeout_s` (never by a tool's timeout), saying so; a build that fails or runs out of
time leaves the tools that need it unavailable for that run, with the reason, and nothing partial:
each build writes into a temporary name and renames when complete, so a killed build is simply
rebuilt next time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from medagent.tools.config import Settings, cache_root, load_settings
from medagent.tools.errors import MedagentError
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Build, adapter_builds

SETTINGS_FROM_STDIN = "--settings-from-stdin"


def _offline_llm(settings: Settings) -> dict | None:
    """The llama.cpp preset values when the configured LLM is a packaged GGUF run in-process, else None."""
    from medagent.agent.api import _use_llm
    from medagent.agent.llm.factory import resolved

    try:
        if not _use_llm(settings, settings.agent.planner):
            return None
    except MedagentError:
        return None
    values = resolved(settings.llm)
    return values if values.get("backend") == "llamacpp" else None


def _gguf_path(settings: Settings) -> Path | None:
    values = _offline_llm(settings)
    if values is None:
        return None
    if values.get("model_path"):
        return Path(values["model_path"]).expanduser()
    from medagent.agent.llm.assemble import PACKAGED, assembled_path

    model = PACKAGED.get(values.get("packaged") or "")
    return None if model is None else assembled_path(model, cache_root(settings))


def _llm_ready(settings: Settings, pool: ModelPool) -> bool:
    from medagent.agent.llm.probe import verdict_path

    path = _gguf_path(settings)
    if path is None or not path.is_file():
        return False
    return verdict_path(path, settings.llm.n_ctx, settings.llm.n_threads, cache_root(settings)).is_file()


def _llm_build(settings: Settings, pool: ModelPool) -> str:
    from medagent.agent.llm.factory import local_gguf
    from medagent.agent.llm.probe import ensure_backend_runs

    path = local_gguf(_offline_llm(settings) or {}, settings)
    verdict = ensure_backend_runs(path, settings.llm.n_ctx, settings.llm.n_threads, cache_root(settings))
    return f"{path.name} assembled; llama.cpp probe passed in {verdict.get('seconds', 0):.0f} s"


# The agent's own build (the offline LLM), then each adapter's (tools/<area>.py BUILDS).
LLM_BUILD = Build("offline LLM (assemble the GGUF, probe llama.cpp)", (), lambda s: _offline_llm(s) is not None,
                  _llm_ready, _llm_build)


def builds() -> list[Build]:
    return [LLM_BUILD, *adapter_builds()]


def missing(settings: Settings, pool: ModelPool) -> list[Build]:
    """The builds these settings need that are not in the cache yet (a few stat calls)."""
    out = []
    for build in builds():
        try:
            if build.wanted(settings) and not build.ready(settings, pool):
                out.append(build)
        except (MedagentError, OSError):
            out.append(build)  # cannot tell: building will say what is wrong
    return out


def run_setup(settings: Settings, say: Callable[[str], None] = print) -> list[tuple[str, str | None]]:
    """Every wanted build, in this process, one progress line each; [(name, error or None)]."""
    from medagent.tools.knowledge import show_build_progress

    show_build_progress(sys.stderr.isatty())
    pool = ModelPool()  # what the builds load, freed when they are done
    outcome = []
    root = cache_root(settings)
    try:  # before minutes of work: a cache root that cannot be written is said at once
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        unwritable = None
    except OSError as exc:
        unwritable = f"the cache root {root} cannot be written ({exc.strerror or exc})"
    for build in builds():
        if not build.wanted(settings):
            say(f"  – {build.name}: not used by this configuration")
            continue
        if unwritable is not None:
            say(f"  ✗ {build.name}: {unwritable}")
            outcome.append((build.name, unwritable))
            continue
        if build.ready(settings, pool):
            say(f"  ✓ {build.name}: already built")
            outcome.append((build.name, None))
            continue
        say(f"  … {build.name}: building (once per machine)")
        started = time.monotonic()
        try:
            note = build.build(settings, pool)
        except (MedagentError, OSError) as exc:
            say(f"  ✗ {build.name}: {exc}")
            outcome.append((build.name, str(exc)))
            continue
        say(f"  ✓ {build.name}: {note} ({time.monotonic() - started:.0f} s)")
        outcome.append((build.name, None))
    pool.close()
    return outcome


def ensure_built(settings: Settings, progress: Callable[[str], None] | None = None,
                 pool: ModelPool | None = None) -> dict[str, str]:
    """Before a run: build what is missing in a child process bounded by `[cache] build_timeout_s`.
    `pool` (the run's) holds the graph the checks read.

    Returns {tool name: reason} for tools that must sit this run out because their build failed."""
    pool = pool if pool is not None else ModelPool()
    needed = missing(settings, pool)
    if not needed:
        return {}
    say = progress or (lambda message: None)
    bound = settings.cache.build_timeout_s
    say(f"one-time set-up not done yet ({', '.join(b.name.split(' (')[0] for b in needed)}): building now, "
        f"at most {bound:g} s; `medagent setup` does this ahead of time")
    # The child builds for exactly these settings (an evaluation's overrides included), not the config file's.
    command = [sys.executable, "-m", "medagent.agent.setup", SETTINGS_FROM_STDIN]
    started = time.monotonic()
    try:
        child = subprocess.run(command, input=settings.model_dump_json(), capture_output=True, text=True, timeout=bound)
        failure = None if child.returncode == 0 else (
            [line.strip() for line in child.stdout.splitlines() if "✗" in line][:1] or
            [f"set-up exited with code {child.returncode}: {child.stderr.strip().splitlines()[-1:] or ''}"])[0]
    except subprocess.TimeoutExpired:
        failure = f"the one-time build ran past [cache] build_timeout_s = {bound:g} s"
    say(f"one-time set-up {'finished' if failure is None else 'failed'} in {time.monotonic() - started:.0f} s")
    blocked: dict[str, str] = {}
    for build in missing(settings, pool):  # whatever is still missing now could not be built
        for tool in build.tools:
            blocked.setdefault(tool, f"{build.name} could not be built ({failure or 'unknown failure'}); run `medagent setup`")
    if failure and not blocked:
        say(f"set-up: {failure}")
    return blocked


def main() -> int:
    """`python -m medagent.agent.setup [--settings-from-stdin]`: the child that `ensure_built` starts (its
    settings as JSON on stdin), or a set-up with the settings the environment names."""
    try:
        if SETTINGS_FROM_STDIN in sys.argv[1:]:
            settings = Settings.model_validate_json(sys.stdin.read())
        else:
            settings = load_settings(None)
    except MedagentError as exc:
        print(f"✗ configuration: {exc}")
        return 2
    results = run_setup(settings, say=lambda line: print(line, flush=True))
    return 1 if any(error for _, error in results) else 0


if __name__ == "__main__":
    sys.exit(main())
