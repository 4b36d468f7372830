"""`medagent doctor`: is this machine ready, which models are found, where each is looked for."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medagent.tools.errors import MedagentError
from medagent.tools.pool import ModelPool, describe, file_bytes, mib

PACKAGES = (
    "pydantic", "typer", "pydicom", "nibabel", "soundfile", "pillow", "numpy", "langgraph", "httpx",
    "torch", "torchvision", "monai", "transformers", "sentence-transformers", "faiss-cpu", "hpo3",
    "simple-icd-10-cm", "faster-whisper", "llama-cpp-python",
)


def model_files(settings, available: set[str]) -> list[tuple[str, Path]]:  # noqa: ANN001 - Settings
    """(what, file or folder) for each model a run under these settings would load: the LLM's GGUF, then what
    each available tool declares (Tool.model_files), each path once."""
    from medagent.agent.setup import _gguf_path
    from medagent.tools.registry import all_tools

    found = []
    gguf = _gguf_path(settings)
    if gguf is not None:
        found.append(("LLM (llama.cpp GGUF, memory-mapped)", gguf))
    for tool in all_tools():
        if tool.name in available:
            found += [(what, path) for what, path in tool.model_files(settings) if path not in {p for _, p in found}]
    return found


def memory_lines(settings, available: set[str], pool: ModelPool | None = None) -> list[str]:  # noqa: ANN001 - Settings
    """What a pool in this process holds, and the on-disk size of what a run would load (a first guess at its memory)."""
    held = pool.loaded() if pool is not None else []
    if held:
        lines = [f"this process's model pool holds {len(held)}, about {mib(sum(e.bytes or 0 for e in held))}:"]
        lines += [f"  {line}" for line in describe(held)]
    else:
        lines = ["no model is loaded in this process (doctor loads none); after a solve, the last event of its "
                 "trace.jsonl (`models`) lists what the run held, with memory estimates"]
    files = model_files(settings, available)
    if files:
        lines.append("a run would load (sizes on disk; weights take about this much memory, a graph or index more):")
        total = 0
        for what, path in files:
            size = file_bytes(path)
            total += size
            lines.append(f"  {what}: {mib(size) if size else 'not built yet'} at {path}")
        lines.append(f"  together {mib(total)} on disk")
    return lines


def run_doctor(config: Path | None, pool: ModelPool | None = None) -> bool:
    """`pool`: a process's model pool to report on (the CLI has none: a doctor process loads no models)."""
    from medagent.tools.config import cache_root, load_settings
    from medagent.tools.registry import Registry

    console = Console()
    ok = True
    console.print(f"[bold]medagent doctor[/bold] — Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    console.print("\n[bold]packages[/bold]")
    for name in PACKAGES:
        try:
            console.print(f"  ✓ {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            console.print(f"  [red]✗ {name} not installed[/red] (run `make demo` or `pip install -e .`)")
            ok = False
    console.print("\n[bold]configuration[/bold]")
    try:
        settings = load_settings(config)
        console.print(f"  ✓ config: {settings.source or 'none found; defaults apply (offline CPU setup)'}")
    except MedagentError as exc:
        console.print(f"  [red]✗ {escape(str(exc))}[/red]")
        return False
    root = cache_root(settings)
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    console.print(f"  {'✓' if writable else '[red]✗'} cache root: {root}{'' if writable else ' is not writable[/red]'}")
    ok = ok and writable
    console.print("\n[bold]LLM (planner and reporter)[/bold]")
    from medagent.agent.llm.factory import doctor_lines

    for line in doctor_lines(settings):
        console.print(f"  {escape(line)}", highlight=False)
    console.print("\n[bold]llama.cpp (in-process offline LLM)[/bold]")
    from medagent.agent.llm.probe import build_lines

    for line in build_lines(settings):
        console.print(f"  {escape(line)}", highlight=False)
    console.print("\n[bold]tools[/bold]")
    from medagent.agent.api import placed_tools

    try:  # tools on the Ray cluster ([serve] remote_tools) are as their deployments answer
        registry = Registry(settings, placed_tools(settings))
    except MedagentError as exc:
        console.print(f"  [red]✗ {escape(str(exc))}[/red]")
        registry, ok = Registry(settings), False
    for name, tool in registry.tools.items():
        reason = registry.unavailable_reason(name)
        mark = "✓" if reason is None else "[yellow]–[/yellow]"
        where = f" (on {tool.remote.label})" if tool.remote is not None else ""
        console.print(f"  {mark} {name}{escape(where)}: {'available' if reason is None else 'unavailable: ' + escape(reason)}")
        for line in tool.doctor(settings):
            console.print(f"      {escape(line)}", highlight=False)
    console.print("\n[bold]model memory[/bold]")
    available = {name for name in registry.tools if registry.unavailable_reason(name) is None}
    try:
        for line in memory_lines(settings, available, pool):
            console.print(f"  {escape(line)}", highlight=False)
    except (MedagentError, OSError) as exc:
        console.print(f"  [yellow]–[/yellow] model sizes not read: {escape(str(exc))}")
    return ok
