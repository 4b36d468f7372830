"""LLM measurements (run by hand): generation/prefill tokens/s, prefill with and without the prompt
cache, planning latency per example case with the LLM's share of calls, grounding acceptance.

    .venv/bin/python benchmarks/llm_speed.py speed [--model 1.5b|0.5b]
    .venv/bin/python benchmarks/llm_speed.py plan examples/*_case.json
    .venv/bin/python benchmarks/llm_speed.py grounding out/*/result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

from medagent.agent.llm.assemble import assemble
from medagent.agent.llm.local import LlamaCppBackend
from medagent.agent.llm_planner import LLMPlanner, planner_messages, render_case
from medagent.tools.config import Settings, cache_root
from medagent.tools.contracts import CallOrigin
from medagent.tools.intake import load_case
from medagent.tools.registry import Registry
from medagent.tools.trace import TraceRecorder

MODELS = {"1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m", "0.5b": "qwen2.5-coder-0.5b-instruct"}


def machine() -> str:
    load = os.getloadavg()[0]
    return f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at start"


def backend(model: str) -> LlamaCppBackend:
    return LlamaCppBackend(assemble(MODELS[model], cache_root()), n_ctx=4096, name=MODELS[model])


def speed(model: str) -> None:
    llm = backend(model)
    tools = Registry(Settings()).available()
    cases = [load_case(Path(p)).case for p in ("examples/multimodal_case.json", "examples/history_case.json")]
    prompts = [planner_messages(render_case(c)[0], tools, [], []) for c in cases]
    # Generation speed: a short free-text answer.
    start = time.monotonic()
    result = llm._chat_sync([{"role": "user", "content": "List ten organs of the body, comma separated."}], None, 64, 0.0)
    print(f"generation: {result.completion_tokens} tokens in {time.monotonic() - start:.2f} s")
    # Prefill: the same planner prompt of case B, cold (cache reset) vs after case A shared the prefix.
    llm.reset_cache()
    t0 = time.monotonic()
    cold = llm._chat_sync(prompts[1], None, 1, 0.0)
    cold_s = time.monotonic() - t0
    llm._chat_sync(prompts[0], None, 1, 0.0)  # case A: warms the fixed prefix (system + catalogue)
    t0 = time.monotonic()
    llm._chat_sync(prompts[1], None, 1, 0.0)
    warm_s = time.monotonic() - t0
    print(f"prefill of a {cold.prompt_tokens}-token planner prompt: cold {cold_s:.2f} s ({cold.prompt_tokens / cold_s:.0f} tok/s), "
          f"with the fixed prefix cached {warm_s:.2f} s: {cold_s / warm_s:.1f}x faster")


def plan(paths: list[str], model: str) -> None:
    llm = backend(model)
    settings = Settings()
    tools = Registry(settings).available()
    total = own = 0
    for path in paths:
        case = load_case(Path(path)).case
        trace = TraceRecorder(case.id)
        start = time.monotonic()
        calls = asyncio.run(LLMPlanner(llm, settings, trace).plan(case, tools, [], []))
        seconds = time.monotonic() - start
        turns = [e for e in trace.events if e.event == "llm_turn"]
        mine = sum(c.origin in (CallOrigin.llm, CallOrigin.repair) for c in calls)
        total, own = total + len(calls), own + mine
        tokens = ", ".join(f"{t.prompt_tokens}+{t.completion_tokens} tok" for t in turns)
        print(f"{case.id}: planned in {seconds:.1f} s ({tokens or 'no LLM turn'}); {mine}/{len(calls)} calls from the LLM (before the coverage guard)")
    print(f"LLM share of planned calls: {own}/{total}")


def grounding(paths: list[str]) -> None:
    supported = sentences = 0
    for path in paths:
        result = json.loads(Path(path).read_text())
        g = result["grounding"]
        supported, sentences = supported + g["supported"], sentences + g["sentences"]
        origins = [c["origin"] for c in result["calls"]]
        print(f"{result['case_id']}: {g['supported']}/{g['sentences']} sentences accepted; calls by origin {dict((o, origins.count(o)) for o in set(origins))}")
    print(f"grounding acceptance: {supported}/{sentences}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["speed", "plan", "grounding"])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--model", default="1.5b", choices=list(MODELS))
    args = parser.parse_args()
    print(f"machine: {machine()}; model {MODELS[args.model]}")
    {"speed": lambda: speed(args.model), "plan": lambda: plan(args.paths, args.model), "grounding": lambda: grounding(args.paths)}[args.what]()
