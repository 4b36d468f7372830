"""Scoring from trace events alone, so traces from any run can be (re)scored.

Metric definitions:
- rank: 1-based position of the first differential candidate whose codes include an expected id
  or whose name matches an expected label (case- and punctuation-insensitive); None if absent.
- top1/top3/top10: rank <= k; rr: 1/rank (0 when absent); MRR is the mean of rr.
- required_recall: share of expected tools that were called (accepted calls only).
- tool_precision: share of called tools that are expected (when the item lists expected tools).
- forbidden_called: expected-forbidden tools that were called anyway.
- rejected / repaired / by_origin: planner quality (validation rejections, repair calls, who planned).
- error_evidence: tool results flagged as errors.
- grounded_share: supported report sentences / report sentences (when grounding ran).
"""

from __future__ import annotations

import re
from collections import Counter
from statistics import mean
from typing import Any

from medagent.evals.suite import Expected
from medagent.tools.trace import TraceEvent


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def diagnosis_rank(differential: list[dict[str, Any]], expected: Expected) -> int | None:
    ids = {i.upper() for i in expected.answer_ids}
    labels = {normalise(label) for label in expected.answer_labels if label.strip()}
    for position, candidate in enumerate(differential, start=1):
        codes = {str(code.get("id", "")).upper() for code in candidate.get("codes", [])}
        codes |= {f"{code.get('system', '')}:{code.get('id', '')}".upper() for code in candidate.get("codes", [])}
        if ids & codes:
            return position
        if labels and normalise(candidate.get("name", "")) in labels:
            return position
    return None


def score_events(events: list[TraceEvent], expected: Expected) -> dict[str, Any]:
    calls = [e for e in events if e.event == "tool_call"]
    accepted = [e for e in calls if not e.rejected]
    called = [e.tool for e in accepted]
    results = [e for e in events if e.event == "tool_result"]
    final = next((e for e in reversed(events) if e.event == "result"), None)
    score: dict[str, Any] = {
        "completed": final is not None,
        "calls": len(calls),
        "rejected": len(calls) - len(accepted),
        "repaired": sum(1 for e in calls if e.origin.value == "repair"),
        "by_origin": dict(Counter(e.origin.value for e in calls)),
        "repeated_calls": len(called) - len({(e.tool, str(sorted(e.arguments.items()))) for e in accepted}),
        "error_evidence": sum(1 for e in results if e.error),
        "tools_called": sorted(set(called)),
        "seconds": events[-1].t if events else 0.0,
        "llm_tokens": sum((getattr(e, "prompt_tokens", 0) or 0) + (getattr(e, "completion_tokens", 0) or 0) for e in events if e.event == "llm_turn"),
        "errors": [e.message for e in events if e.event == "error" and not e.message.startswith("warning:")],
    }
    if expected.required_tools:
        required = set(expected.required_tools)
        score["required_recall"] = len(required & set(called)) / len(required)
        score["tool_precision"] = (len(set(called) & required) / len(set(called))) if called else 0.0
    if expected.forbidden_tools:
        score["forbidden_called"] = sorted(set(expected.forbidden_tools) & set(called))
    if final is not None and (expected.answer_ids or expected.answer_labels):
        rank = diagnosis_rank(final.differential, expected)
        score.update(
            rank=rank,
            top1=rank is not None and rank <= 1,
            top3=rank is not None and rank <= 3,
            top10=rank is not None and rank <= 10,
            rr=1.0 / rank if rank else 0.0,
        )
    if final is not None and final.grounding.get("status") == "checked" and final.grounding.get("sentences"):
        score["grounded_share"] = final.grounding["supported"] / final.grounding["sentences"]
    return score


def aggregate(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of the numeric/boolean metrics over the items that have them."""
    summary: dict[str, Any] = {"items": len(scores), "completed": sum(1 for s in scores if s.get("completed"))}
    keys = ("top1", "top3", "top10", "rr", "required_recall", "tool_precision", "grounded_share", "seconds", "error_evidence", "rejected")
    for key in keys:
        values = [float(s[key]) for s in scores if key in s and s[key] is not None]
        if values:
            summary["mrr" if key == "rr" else key] = round(mean(values), 4)
    forbidden = sum(1 for s in scores if s.get("forbidden_called"))
    if any("forbidden_called" in s for s in scores):
        summary["items_calling_forbidden_tools"] = forbidden
    return summary
