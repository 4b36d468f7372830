"""Probe the in-process llama.cpp backend in a child process before the first generation.

llama.cpp is native code: a CPU or build it does not suit kills the whole process (SIGSEGV in a
repacked matmul, SIGILL on a missing instruction set) and no Python `except` can catch that. So
before a process first generates with a GGUF, a child process loads the same file with the same
settings and generates a few tokens. Its verdict is cached per (llama-cpp-python build, CPU flags,
GGUF checksum, context, threads) under `<cache root>/llm/probe/`, so the probe costs its seconds
once per machine and model, not per run. A failed probe is cached too (a crash would repeat); a
probe that ran out of time is not (a busy machine may be slow once).

`MEDAGENT_TEST_PROBE_ABORT=1` makes the child call `os.abort()` before loading anything: tests use
it to prove that a really crashing backend never takes a run down. It is never set outside tests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from medagent.tools.errors import UnavailableError

ABORT_ENV = "MEDAGENT_TEST_PROBE_ABORT"
PROBE_TIMEOUT_S = 600.0  # loading 1.1 GB and 8 tokens take ~10 s here; a swapping machine may need minutes
_VERDICTS: dict[str, dict] = {}  # per process: a probe runs at most once per key


@functools.cache
def build_record() -> dict:
    """What scripts/install_llama.py recorded about the llama-cpp-python build in this environment."""
    record = Path(sys.prefix) / "share" / "medagent" / "llama-build.json"
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return tuple(sorted(set(line.split(":", 1)[1].split())))
    except OSError:
        pass
    return ()


def gguf_identity(path: Path) -> str:
    """The file's size and time, and the SHA-256 its manifest records (the probe checks the file against it)."""
    stat = path.stat()
    try:
        recorded = json.loads((path.parent / "manifest.json").read_text()).get("sha256", "")
    except (OSError, ValueError):
        recorded = ""
    return f"{stat.st_size}-{stat.st_mtime_ns}-{recorded}"


def probe_key(path: Path, n_ctx: int, n_threads: int | None) -> str:
    import importlib.metadata as metadata

    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        version = "missing"
    parts = [version, build_record().get("key", "unrecorded"), list(cpu_flags()), gguf_identity(path), n_ctx, n_threads,
             os.environ.get(ABORT_ENV, "")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def verdict_path(path: Path, n_ctx: int, n_threads: int | None, cache: Path) -> Path:
    """Where the probe's verdict for this GGUF, build and CPU is kept."""
    return cache / "llm" / "probe" / f"{probe_key(path, n_ctx, n_threads)}.json"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"probe died: {signal.Signals(-code).name}"
        except ValueError:
            return f"probe died: signal {-code}"
    return f"probe exited with code {code}"


def run_probe(path: Path, n_ctx: int, n_threads: int | None, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Load and generate in a child; the verdict {ok, reason, seconds} (never raises for a crash)."""
    command = [sys.executable, "-m", "medagent.agent.llm.probe", str(path), str(n_ctx), str(n_threads or 0)]
    started = time.monotonic()
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                               env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"probe did not finish in {timeout_s:g} s", "cache": False,
                "seconds": round(time.monotonic() - started, 1)}
    seconds = round(time.monotonic() - started, 1)
    if child.returncode == 0 and child.stdout.strip().endswith("probe ok"):
        return {"ok": True, "reason": "probe generated tokens", "seconds": seconds}
    reason = describe_exit(child.returncode)
    last = [line for line in child.stderr.strip().splitlines() if line.strip()][-1:] if child.returncode > 0 else []
    if last:
        reason += f" ({last[0][:200]})"
    return {"ok": False, "reason": reason, "seconds": seconds}


def ensure_backend_runs(path: Path, n_ctx: int, n_threads: int | None, cache: Path) -> dict:
    """Raise UnavailableError('offline LLM unavailable (probe died: SIGSEGV)') unless llama.cpp runs here."""
    stored = verdict_path(path, n_ctx, n_threads, cache)
    verdict = _VERDICTS.get(stored.name)
    if verdict is None and stored.is_file():
        try:
            verdict = json.loads(stored.read_text())
        except (OSError, ValueError):
            verdict = None  # a damaged verdict is probed again
    if verdict is None:
        verdict = run_probe(path, n_ctx, n_threads)
        if verdict.pop("cache", True):
            try:
                stored.parent.mkdir(parents=True, exist_ok=True)
                partial = stored.with_suffix(f".tmp{os.getpid()}")
                partial.write_text(json.dumps({**verdict, "gguf": str(path)}))
                partial.replace(stored)
            except OSError:
                pass  # an unwritable cache only means probing again next time
    _VERDICTS[stored.name] = verdict
    if not verdict.get("ok"):
        raise UnavailableError(f"offline LLM unavailable ({verdict.get('reason', 'probe failed')})")
    return verdict


def build_lines(settings) -> list[str]:  # noqa: ANN001 - Settings
    """What `medagent doctor` says: the variant built, the CPU features llama.cpp sees, and the probe's
    verdict for the configured GGUF when there is one."""
    record = build_record()
    if not record:
        lines = ["build: not recorded (installed without scripts/install_llama.py: pip's default -march=native build)"]
    else:
        lines = [f"build: llama-cpp-python {record.get('version')}, {record.get('variant')} variant "
                 f"(asked for: {record.get('requested')}){'; C flags ' + record['cflags'] if record.get('cflags') else ''}"]
        lacking = sorted(set(record.get("cpu_flags_needed", [])) - set(cpu_flags()))
        if lacking:
            lines.append(f"  this CPU lacks {', '.join(lacking)}, which the build uses: rebuild with `make setup` "
                         "(or MEDAGENT_LLAMA_CPU=avx2)")
    try:
        import llama_cpp

        lines.append(f"features llama.cpp sees: {llama_cpp.llama_print_system_info().decode().strip(' |')}")
    except Exception as exc:  # noqa: BLE001 - a library that does not load is itself the finding
        lines.append(f"llama_cpp does not load: {exc.__class__.__name__}: {exc}")
        return lines
    from medagent.agent.setup import _gguf_path
    from medagent.tools.config import cache_root

    path = _gguf_path(settings)
    if path is None:
        lines.append("probe: no in-process GGUF configured")
    elif not path.is_file():
        lines.append(f"probe: {path} not assembled yet (`medagent setup`)")
    else:
        stored = verdict_path(path, settings.llm.n_ctx, settings.llm.n_threads, cache_root(settings))
        try:
            verdict = json.loads(stored.read_text())
            lines.append(f"probe: {'passed' if verdict.get('ok') else 'FAILED: ' + verdict.get('reason', '')} "
                         f"({verdict.get('seconds', '?')} s) for {path.name}")
        except (OSError, ValueError):
            lines.append(f"probe: not run yet for {path.name} (`medagent setup` runs it)")
    return lines


def _child(path: str, n_ctx: int, n_threads: int) -> None:
    if os.environ.get(ABORT_ENV) == "1":
        os.abort()
    manifest = Path(path).parent / "manifest.json"
    if manifest.is_file():  # an assembled packaged GGUF: the bytes must be the ones assembled
        from medagent.agent.llm.assemble import verify

        try:
            verify(Path(path))
        except Exception as exc:  # noqa: BLE001 - reported as the probe's one line
            print(f"{exc}", file=sys.stderr)
            sys.exit(4)
    from llama_cpp import Llama

    llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads or None, verbose=False)
    # A prompt of a few dozen tokens: prefill in a batch, then single-token decodes (both kernels run).
    answer = llama.create_chat_completion(
        messages=[{"role": "user", "content": "Name one organ of the abdomen, in one word. " * 4}], max_tokens=8,
        temperature=0.0,
    )
    if not answer["choices"][0]["message"].get("content"):
        print("probe generated nothing", file=sys.stderr)
        sys.exit(3)
    print("probe ok")


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
