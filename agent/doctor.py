"""`medagent doctor`: is this machine ready, which models are found, where each is looked for."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medagent.tools.errors import MedagentError

PACKAGES = (
    "pydantic", "typer", "pydicom", "nibabel", "soundfile", "pillow", "numpy", "langgraph", "httpx",
    "torch", "torchvision", "monai", "transformers", "sentence-transformers", "faiss-cpu", "hpo3",
    "simple-icd-10-cm", "faster-whisper", "llama-cpp-python",
)


def run_doctor(config: Path | None) -> bool:
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
    registry = Registry(settings)
    for name, tool in registry.tools.items():
        reason = registry.unavailable_reason(name)
        mark = "✓" if reason is None else "[yellow]–[/yellow]"
        console.print(f"  {mark} {name}: {'available' if reason is None else 'unavailable: ' + escape(reason)}")
        for line in tool.doctor(settings):
            console.print(f"      {escape(line)}", highlight=False)
    return ok
