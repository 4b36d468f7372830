"""The graph itself: concurrency (from trace timestamps), timeouts, crashes, reflection bounds.

The tools here are real Tool objects that sleep or fail on purpose: they stand for slow or broken
specialists, which is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import time

from medagent.agent.api import run_loaded
from medagent.agent.planner import RulePlanner
from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, EvidenceDraft
from medagent.tools.describe import TOOLS as DESCRIBE
from medagent.tools.intake import resolve_attachments
from medagent.tools.registry import AttachmentArgs, Tool
from medagent.tools.trace import TraceRecorder


def sleeper(name: str, seconds: float) -> Tool:
    def run(args, ctx):
        time.sleep(seconds)
        return [EvidenceDraft(summary=f"{name} slept {seconds} s.", attachment=args.attachment)]

    return Tool(name=name, purpose="sleeps", args=AttachmentArgs, run=run, attachment_kinds=(AttachmentKind.volume,))


def crasher(name: str) -> Tool:
    def run(args, ctx):
        raise RuntimeError("model exploded")

    return Tool(name=name, purpose="crashes", args=AttachmentArgs, run=run, attachment_kinds=(AttachmentKind.volume,))


def loaded_case(examples):
    case = Case(id="g1", attachments=[{"id": "ct", "kind": "volume", "path": "data/ct_small.nii.gz", "modality": "CT"}])
    return resolve_attachments(case, examples)


def solve_with(examples, tmp_path, tools, settings=None):
    return asyncio.run(run_loaded(loaded_case(examples), settings or Settings(), tmp_path / "artifacts", TraceRecorder("g1"), tools))


def test_independent_slow_tools_run_concurrently(examples, tmp_path):
    result, trace = solve_with(examples, tmp_path, [sleeper("slow.one", 1.0), sleeper("slow.two", 1.0)])
    spans = [(e.started, e.finished) for e in trace.events if e.event == "tool_result"]
    assert len(spans) == 2
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, f"calls did not overlap: {spans}"
    assert [e.id for e in result.evidence] == ["E1", "E2"]


def test_timeout_and_crash_become_error_evidence(examples, tmp_path):
    settings = Settings.model_validate({"agent": {"tool_timeout_s": 0.3}})
    tools = [sleeper("slow.one", 2.0), crasher("bad.tool"), *DESCRIBE]
    result, trace = solve_with(examples, tmp_path, tools, settings)
    by_tool = {e.tool: e for e in result.evidence}
    assert by_tool["slow.one"].error and "timed out after 0.3 s" in by_tool["slow.one"].summary
    assert by_tool["bad.tool"].error and "model exploded" in by_tool["bad.tool"].summary
    assert not by_tool["imaging.describe"].error  # the healthy tool still reported
    assert any("model exploded" in line for line in result.report.limitations)
    assert sum(1 for e in trace.events if e.event == "error") == 2


class EndlessPlanner(RulePlanner):
    """Asks for one more (new) call at every reflection: max_steps must stop it."""

    def reflect(self, case, tools, evidence, calls):
        from medagent.tools.contracts import ToolCall

        return [ToolCall(call_id="x", tool="imaging.describe", arguments={"attachment": "ct"}, reason=f"again {len(calls)}")]


def test_reflection_is_bounded_and_repeats_are_rejected(examples, tmp_path):
    settings = Settings.model_validate({"agent": {"max_steps": 3}})
    result, trace = asyncio.run(run_loaded(loaded_case(examples), settings, tmp_path / "a", TraceRecorder("g1"),
                                           list(DESCRIBE), planner=EndlessPlanner()))
    plans = [e for e in trace.events if e.event == "plan"]
    assert [p.step for p in plans] == [1, 2, 3]
    rejected = [e for e in trace.events if e.event == "tool_call" and e.rejected]
    assert len(rejected) == 2 and all("repeated call" in e.rejection for e in rejected)
    assert len(result.evidence) == 1


def test_unexaminable_attachment_is_said_plainly(tmp_path):
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "talk.wav", np.zeros(16000, dtype=np.float32), 16000)
    case = Case(id="a1", attachments=[{"id": "voice", "kind": "audio", "path": "talk.wav"}])
    loaded = resolve_attachments(case, tmp_path)
    result, _ = asyncio.run(run_loaded(loaded, Settings(), tmp_path / "a", TraceRecorder("a1"), list(DESCRIBE)))
    assert any("voice" in line and "not examined" in line for line in result.report.limitations)
