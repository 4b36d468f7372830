"""report.md: the result as a clinician-researcher reads it, every citation resolving below."""

from __future__ import annotations

from medagent.tools.contracts import Case, GroundingVerdict, Result

FLAG = {
    GroundingVerdict.unsupported: "⚠ unsupported by the cited evidence",
    GroundingVerdict.no_citation: "⚠ no evidence cited",
    GroundingVerdict.unknown_citation: "⚠ cites evidence that does not exist",
}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(result: Result, case: Case | None = None) -> str:
    lines = [f"# medagent report — case {result.case_id}", "", f"> {result.notice}", ""]
    if case is not None:
        who = []
        if case.patient.age_years is not None:
            who.append(f"{case.patient.age_years:g}-year-old")
        if case.patient.sex.value != "unknown":
            who.append(case.patient.sex.value)
        if who:
            lines += [f"**Patient:** {' '.join(who)}", ""]
    lines += [f"**Question:** {result.question}", "", "## Differential diagnosis", ""]
    if result.differential:
        lines += ["| rank | diagnosis | codes | score | evidence |", "|---|---|---|---|---|"]
        for c in result.differential:
            codes = ", ".join(f"{code.system}:{code.id}" if ":" not in code.id else code.id for code in c.codes)
            score = f"{c.score:.3f}" if c.score is not None else ""
            name = _cell(c.name) + (f" (LLM, unverified; rests on: {_cell('; '.join(c.findings))})" if c.proposed_by == "llm" else "")
            lines.append(f"| {c.rank} | {name} | {codes} | {score} | {', '.join(c.evidence)} |")
    else:
        lines.append(f"_{result.differential_note}_")
    lines += ["", "## Report", ""]
    for sentence in result.report.sentences:
        cites = "".join(f" [{c}]" for c in sentence.citations)
        flag = FLAG.get(sentence.verdict)
        lines.append(f"- {sentence.text}{cites}" + (f" **{flag}**" + (f" ({sentence.reason})" if sentence.reason else "") if flag else ""))
    grounding = result.grounding
    lines += ["", f"_Grounding: {grounding.status}"
              + (f" by {grounding.checker}: {grounding.supported}/{grounding.sentences} sentences supported, {grounding.flagged} flagged" if grounding.status == "checked" else "")
              + (f". {grounding.note}" if grounding.note else "") + "_"]
    if result.report.conflicts:
        lines += ["", "## Conflicting sources", ""]
        lines += [f"- {_cell(item)}" for item in result.report.conflicts]
    if result.report.limitations:
        lines += ["", "## What could not be examined", ""]
        lines += [f"- {item}" for item in result.report.limitations]
    lines += ["", "## Evidence", "", "| id | tool | attachment | finding | confidence |", "|---|---|---|---|---|"]
    for e in result.evidence:
        confidence = f"{e.confidence:.2f}" if e.confidence is not None else ""
        finding = ("**error:** " if e.error else "") + _cell(e.summary)
        lines.append(f"| {e.id} | {e.tool} | {e.attachment or ''} | {finding} | {confidence} |")
    images = [(e.id, a) for e in result.evidence for a in e.artifacts if a.lower().endswith((".png", ".jpg", ".jpeg"))]
    if images:
        lines += ["", "## Images", ""]
        lines += [f"![{eid}: {path}]({path})" for eid, path in images]
    lines += ["", "## Tool calls", "", "| call | tool | arguments | origin | reason |", "|---|---|---|---|---|"]
    for call in result.calls:
        args = ", ".join(f"{k}={v}" for k, v in call.arguments.items())
        lines.append(f"| {call.call_id} | {call.tool} | {_cell(args)} | {call.origin.value} | {_cell(call.reason or '')} |")
    lines += ["", "## Timings and models", "", f"Total {result.timings.total_s:.2f} s; "
              + ", ".join(f"{node} {s:.2f} s" for node, s in result.timings.nodes_s.items()) + ".", ""]
    lines += [f"- {name}: {version}" for name, version in sorted(result.models.items())]
    lines += ["", f"_{result.notice}_", ""]
    return "\n".join(lines)
