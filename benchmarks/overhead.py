"""Orchestration overhead: agent wall time vs the critical path of tool time.

Tools that sleep for known times stand in for specialists. For N independent tools of S seconds
each, the critical path is S (they run concurrently); overhead = wall - S. Run by hand:

    .venv/bin/python benchmarks/overhead.py
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from medagent.agent.api import run_loaded
from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, EvidenceDraft
from medagent.tools.intake import resolve_attachments
from medagent.tools.pool import ModelPool
from medagent.tools.registry import AttachmentArgs, Tool
from medagent.tools.trace import TraceRecorder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def sleeper(index: int, seconds: float) -> Tool:
    def run(args, ctx):
        time.sleep(seconds)
        return [EvidenceDraft(summary=f"slept {seconds}", attachment=args.attachment)]

    return Tool(name=f"bench.sleep{chr(97 + index)}", purpose="sleep", args=AttachmentArgs, run=run,
                attachment_kinds=(AttachmentKind.volume,))


POOL = ModelPool()  # what the set-up check reads (the graph) loads once, as in a process serving many runs


def measure(n_tools: int, seconds: float, repeats: int = 5) -> tuple[float, float, float]:
    case = Case(id="bench", attachments=[{"id": "ct", "kind": "volume", "path": "data/ct_small.nii.gz", "modality": "CT"}])
    loaded = resolve_attachments(case, EXAMPLES)
    settings = Settings.model_validate({"agent": {"max_concurrency": max(n_tools, 1)}})
    tools = [sleeper(i, seconds) for i in range(n_tools)]
    walls, steps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            result, trace = asyncio.run(run_loaded(loaded, settings, Path(tmp) / "a", TraceRecorder("bench"), tools, pool=POOL))
            walls.append(time.perf_counter() - start)
            steps.append(len(result.timings.nodes_s))
    wall = statistics.median(walls)
    return wall, wall - seconds, wall / seconds


def main() -> None:
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| tools | sleep each (s) | wall (s) | overhead (s) | wall / critical path |")
    print("|---|---|---|---|---|")
    measure(1, 0.01, 1)  # warm imports and graph compilation
    for n_tools, seconds in ((1, 0.2), (4, 0.2), (8, 0.5), (16, 0.5)):
        wall, overhead, ratio = measure(n_tools, seconds)
        print(f"| {n_tools} | {seconds} | {wall:.3f} | {overhead:.3f} | {ratio:.3f} |")
    print("overhead per run covers 5 graph nodes (intake, plan, act, reflect, report) and trace writing")


if __name__ == "__main__":
    main()
