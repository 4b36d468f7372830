"""Trace → chat-format SFT examples: one example per planning step, the calls that ran as the target.

The one converter both evals/ and training/planner use (DESIGN: the trace alone rebuilds training
data). The prompt is the planner's own first turn of that step when the trace has one (`llm_turn`),
otherwise it is rebuilt from the case and tools with the same prompt code the LLM planner uses.
The target is every accepted call of the step (the model's, the repairs and the guard's), so a
fine-tuned model learns to cover what the guard had to add.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medagent.tools.contracts import Case
from medagent.tools.registry import Tool
from medagent.tools.trace import TraceEvent, read_trace


def trace_examples(events: Sequence[TraceEvent], case: Case | None = None, tools: Sequence[Tool] | None = None) -> list[dict[str, Any]]:
    """`{"messages": [system, user, assistant], "case_id", "step"}` for every plan step that can be rebuilt."""
    calls = {e.call_id: e for e in events if e.event == "tool_call" and not e.rejected}
    examples = []
    turn_messages: list[dict[str, str]] | None = None
    for event in events:
        if event.event == "llm_turn" and event.role == "planner" and turn_messages is None:
            turn_messages = [m for m in event.messages if m["role"] in {"system", "user"}][:2]
        if event.event != "plan":
            continue
        prompt, turn_messages = turn_messages, None
        if prompt is None:
            if event.step != 1 or case is None or tools is None:
                continue  # a reflection prompt needs the evidence text, which only an llm_turn keeps
            from medagent.agent.llm_planner import planner_messages, render_case

            prompt = planner_messages(render_case(case)[0], tools, [], [])
        target = [
            {"tool": calls[i].tool, "arguments": calls[i].arguments, **({"reason": calls[i].reason} if calls[i].reason else {})}
            for i in event.calls if i in calls
        ]
        examples.append({
            "case_id": event.case_id,
            "step": event.step,
            "messages": [*prompt, {"role": "assistant", "content": json.dumps({"calls": target})}],
        })
    return examples


def convert(trace_paths: Sequence[Path], output: Path, cases: dict[str, Case] | None = None, tools: Sequence[Tool] | None = None) -> int:
    """Write the examples of many traces to one JSONL file; returns how many were written."""
    count = 0
    with output.open("w", encoding="utf-8") as sink:
        for path in trace_paths:
            events = read_trace(path)
            case_id = events[0].case_id if events else None
            for example in trace_examples(events, (cases or {}).get(case_id), tools):
                sink.write(json.dumps(example) + "\n")
                count += 1
    return count
