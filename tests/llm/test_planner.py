"""The LLM planner on a real llama.cpp server: constrained calls, validation, repair, loop guard, fallback."""

from __future__ import annotations

import asyncio
import json

import pytest

from medagent.agent.llm.http import HTTPBackend
from medagent.agent.llm_planner import LLMPlanner, call_schema
from medagent.agent.planner import call_key
from medagent.tools.config import LLMSettings, Settings
from medagent.tools.contracts import Attachment, AttachmentKind, CallOrigin, Case, ToolCall
from medagent.tools.registry import Registry
from medagent.tools.trace import TraceRecorder

SETTINGS = Settings(llm=LLMSettings(preset="openai-compatible", base_url="http://127.0.0.1:1", max_calls=4, plan_max_tokens=160))


def scan_case(history: str = "61-year-old man with left upper quadrant pain and early satiety. Splenomegaly on palpation.") -> Case:
    return Case(
        id="llm-plan",
        history=history,
        attachments=[
            Attachment(id="ct", kind=AttachmentKind.volume, path="ct.nii.gz", modality="CT", description="abdominal CT"),
            Attachment(id="mr", kind=AttachmentKind.volume, path="mr.nii.gz", modality="MR", description="abdominal MR"),
        ],
    )


@pytest.fixture(scope="module")
def tools():
    return Registry(SETTINGS).available()


def plan_with(base_url: str, case: Case, tools, calls=(), evidence=()):
    trace = TraceRecorder(case.id)

    async def go():
        backend = HTTPBackend(base_url, "small", dialect="llamacpp", retries=0, timeout_s=240)
        try:
            planner = LLMPlanner(backend, SETTINGS, trace)
            return await planner.plan(case, tools, list(evidence), list(calls))
        finally:
            await backend.aclose()

    return asyncio.run(go()), trace


def test_plan_is_schema_constrained_validated_and_traced(llama_server, tools):
    case = scan_case()
    calls, trace = plan_with(llama_server, case, tools)
    registry = Registry(SETTINGS, tools)
    llm_calls = [c for c in calls if c.origin == CallOrigin.llm]
    for call in calls:
        assert registry.validate(call, case)[1] is None, call  # only valid calls leave the planner
    assert len({call_key(c.tool, c.arguments) for c in calls}) == len(calls)  # no repeats
    turns = [e for e in trace.events if e.event == "llm_turn"]
    assert len(turns) == 1 and turns[0].role == "planner"
    assert turns[0].prompt_tokens > 200 and turns[0].completion_tokens > 0 and turns[0].seconds > 0
    reply = json.loads(turns[0].completion)
    assert isinstance(reply["calls"], list)
    # Everything the model asked for that passed validation is in the plan, marked as its own.
    assert len(llm_calls) == len([c for c in reply["calls"] if registry.validate(ToolCall(call_id="x", tool=c["tool"], arguments=c["arguments"]), case)[1] is None])
    system, user = turns[0].messages
    assert "Splenomegaly" not in system["content"] and "<case>" in user["content"] and "Splenomegaly" in user["content"]


def test_schema_only_offers_fitting_attachments(tools):
    schema = call_schema(scan_case(), tools, 4)
    variants = {v["properties"]["tool"]["const"]: v for v in schema["properties"]["calls"]["items"]["anyOf"]}
    assert variants["imaging.ct_quant"]["properties"]["arguments"]["properties"]["attachment"]["enum"] == ["ct"]
    assert set(variants["imaging.describe"]["properties"]["arguments"]["properties"]["attachment"]["enum"]) == {"ct", "mr"}
    assert "speech.transcribe" not in variants  # no audio in this case


def test_repair_loop_fixes_a_rejected_call(llama_server, tools):
    case = scan_case()
    rejected = ToolCall(call_id="P", tool="imaging.ct_quant", arguments={"attachment": "mr"}, origin=CallOrigin.llm)
    registry = Registry(SETTINGS, tools)
    reason = registry.validate(rejected, case)[1]
    assert reason and "does not examine volume MR" in reason
    trace = TraceRecorder(case.id)

    async def go():
        backend = HTTPBackend(llama_server, "small", dialect="llamacpp", retries=0, timeout_s=240)
        try:
            planner = LLMPlanner(backend, SETTINGS, trace)
            from medagent.agent.llm_planner import render_case

            messages = planner.messages(render_case(case)[0], tools, [], [])
            reply = json.dumps({"calls": [{"tool": "imaging.ct_quant", "arguments": {"attachment": "mr"}}]})
            return await planner.repair(case, tools, messages, reply, [(rejected, reason)], set())
        finally:
            await backend.aclose()

    repaired = asyncio.run(go())
    assert all(c.origin == CallOrigin.repair for c in repaired)
    assert all(registry.validate(c, case)[1] is None for c in repaired)
    assert not any(c.tool == "imaging.ct_quant" and c.arguments.get("attachment") == "mr" for c in repaired)
    turn = next(e for e in trace.events if e.event == "llm_turn")
    assert "does not examine volume MR" in turn.messages[-1]["content"]  # the model saw the reason
    assert any("rejected" in e.message for e in trace.events if e.event == "error")


def test_loop_guard_spends_no_turn_when_every_fitting_call_was_made(tools):
    case = scan_case()
    done = [
        ToolCall(call_id=f"C{i}", tool=t.name, arguments={"attachment": a.id}, origin=CallOrigin.llm)
        for i, (t, a) in enumerate(((t, a) for t in tools for a in case.attachments if t.fits(a) and "attachment" in t.args.model_fields), 1)
    ]
    attachment_tools = [t for t in tools if "attachment" in t.args.model_fields]
    assert call_schema(case, attachment_tools, 4, exclude={call_key(c.tool, c.arguments) for c in done}) is None
    # An unreachable server proves no request is made: the answer is immediate and error-free.
    calls, trace = plan_with("http://127.0.0.1:9", case, attachment_tools, calls=done)
    assert not [e for e in trace.events if e.event in {"llm_turn", "error"}]
    assert not [c for c in calls if c.origin == CallOrigin.llm]


def test_unreachable_server_falls_back_to_the_rule_planner(tools):
    case = scan_case()
    calls, trace = plan_with("http://127.0.0.1:9", case, tools)
    assert calls and all(c.origin in {CallOrigin.rule} for c in calls)
    errors = [e.message for e in trace.events if e.event == "error"]
    assert any("LLM planner failed" in m and "cannot connect" in m and "rule planner" in m for m in errors)
