"""The deterministic rule planner and the coverage guard.

Until an LLM is configured the rule planner plans every case; afterwards it stays on as the
coverage guard (every attachment is examined by a fitting tool). Rules are small functions:
`(case, tools, evidence, calls) -> list[(tool, arguments, reason)]`, so each specialist can add
its own without touching the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from medagent.tools.contracts import Case, CallOrigin, Evidence, ToolCall
from medagent.tools.registry import Tool

Proposal = tuple[str, dict, str]  # tool name, arguments, reason
Rule = Callable[[Case, Sequence[Tool], Sequence[Evidence], Sequence[ToolCall]], list[Proposal]]


def call_key(tool: str, arguments: dict) -> str:
    return tool + json.dumps(arguments, sort_keys=True, default=str)


def _attachment_only(tool: Tool) -> bool:
    return all(not f.is_required() for name, f in tool.args.model_fields.items() if name != "attachment")


def examine_attachments(case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[Proposal]:
    """Every attachment goes to every available tool that examines its kind and modality and needs nothing else
    (a tool with other required arguments, e.g. imaging.segment_text's targets, is left to its own rules)."""
    proposals = []
    for attachment in case.attachments:
        for tool in tools:
            if tool.fits(attachment) and "attachment" in tool.args.model_fields and _attachment_only(tool):
                what = f"{attachment.kind.value}{' ' + attachment.modality if attachment.modality else ''}"
                proposals.append((tool.name, {"attachment": attachment.id}, f"{tool.name} examines {what} attachments"))
    return proposals


def _rules(attribute: str) -> list[Rule]:
    """Rules that adapter modules contribute (`FIRST_STEP_RULES` / `FOLLOW_UP_RULES` in tools/<area>.py)."""
    import importlib

    from medagent.tools.registry import ADAPTER_MODULES

    rules: list[Rule] = []
    for module_name in ADAPTER_MODULES:
        rules.extend(getattr(importlib.import_module(module_name), attribute, []))
    return rules


def _calls(proposals: list[Proposal], done: Sequence[ToolCall], origin: CallOrigin, prefix: str) -> list[ToolCall]:
    seen = {call_key(c.tool, c.arguments) for c in done}
    calls = []
    for tool, arguments, reason in proposals:
        key = call_key(tool, arguments)
        if key in seen:
            continue
        seen.add(key)
        calls.append(ToolCall(call_id=f"{prefix}{len(done) + len(calls) + 1}", tool=tool, arguments=arguments, origin=origin, reason=reason))
    return calls


class RulePlanner:
    name = "rule"

    def plan(self, case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[ToolCall]:
        proposals = [p for rule in [examine_attachments, *_rules('FIRST_STEP_RULES')] for p in rule(case, tools, evidence, calls)]
        return _calls(proposals, calls, CallOrigin.rule, "C")

    def reflect(self, case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]) -> list[ToolCall]:
        proposals = [p for rule in _rules('FOLLOW_UP_RULES') for p in rule(case, tools, evidence, calls)]
        return _calls(proposals, calls, CallOrigin.rule, "C")


def coverage_guard(case: Case, tools: Sequence[Tool], planned: Sequence[ToolCall], done: Sequence[ToolCall]) -> list[ToolCall]:
    """Calls that make sure each attachment is examined by at least one fitting tool."""
    examined = {
        c.arguments.get("attachment") for c in list(done) + list(planned) if isinstance(c.arguments.get("attachment"), str)
    }
    # An attachment the planner left alone gets every fitting tool, as the rule planner would give it:
    # a scan only described (size, spacing) has not really been examined.
    proposals = [p for p in examine_attachments(case, tools, (), ()) if p[1]["attachment"] not in examined]
    return _calls(proposals, list(done) + list(planned), CallOrigin.guard, "C")


def unexaminable(case: Case, tools: Sequence[Tool]) -> list[str]:
    """Attachments no available tool can examine, with a sentence each for the report."""
    lines = []
    for attachment in case.attachments:
        if not any(tool.fits(attachment) for tool in tools):
            what = f"{attachment.kind.value}{' (' + attachment.modality + ')' if attachment.modality else ''}"
            lines.append(f"Attachment {attachment.id} ({what}) was not examined: no available tool reads this kind of input.")
    return lines
