"""The deterministic template reporter: findings from evidence, no invented diagnoses.

It stays the fallback when no LLM reporter is configured or the LLM fails. A tool that ranks
diagnoses has a payload model derived from `payloads.Ranking` (a `differential` of candidates with
name, codes, score, rationale); the template reporter carries those candidates over with their evidence ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from medagent.agent.state import ReportDraft
from medagent.tools.contracts import (
    Case,
    DiagnosisCandidate,
    Evidence,
    Finding,
    GroundingSummary,
    Report,
    ReportSentence,
)
from medagent.tools.payloads import Ranking, payload_models, payload_of


class TemplateReporter:
    name = "template"

    def report(self, case: Case, evidence: Sequence[Evidence], limitations: Sequence[str]) -> ReportDraft:
        findings = [Finding(statement=e.summary, evidence=[e.id]) for e in evidence if not e.error]
        differential = differential_from_evidence(evidence)
        note = "" if differential else (
            "No diagnosis is proposed: no tool in this run ranked diagnoses, and the template reporter "
            "does not infer diagnoses on its own."
        )
        sentences = restated_findings(evidence)
        if differential:
            top = differential[0]
            sentences.append(
                ReportSentence(text=f"The highest-ranked candidate diagnosis is {top.name}.", citations=list(top.evidence))
            )
        failed = [f"{e.tool} on {e.attachment or 'the case'} failed: {e.summary} [{e.id}]" for e in evidence if e.error]
        report = Report(sentences=sentences, limitations=[*failed, *limitations])
        grounding = GroundingSummary(
            status="not_run",
            sentences=len(sentences),
            note="The template reporter restates tool evidence verbatim; the grounding checker was not run.",
        )
        return ReportDraft(differential, note, findings, report, grounding)


def restated_findings(evidence: Sequence[Evidence]) -> list[ReportSentence]:
    """Each usable evidence item's summary as a report sentence citing it: what the template reports verbatim."""
    return [ReportSentence(text=_sentence(e.summary), citations=[e.id]) for e in evidence if not e.error]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def differential_from_evidence(evidence: Sequence[Evidence]) -> list[DiagnosisCandidate]:
    """Ranked candidates from tool evidence. A tool that ranked several times (as more was learnt) counts
    with its latest ranking; rankings from different tools merge, knowledge.rank's first, evidence ids kept."""
    latest: dict[str, tuple[Evidence, Ranking]] = {}
    for item in evidence:
        model = payload_models().get(item.tool)
        if not item.error and model is not None and issubclass(model, Ranking):
            ranking = payload_of(item, model)
            if ranking.differential:
                latest[item.tool] = (item, ranking)
    merged: dict[str, DiagnosisCandidate] = {}
    # The phenotype ranking leads: it weighs everything the case says (history, findings, transcripts, counter-
    # evidence); an image classifier's guesses (RadDiag) follow, their scores not comparable with its own.
    for item, ranking in sorted(latest.values(), key=lambda pair: pair[0].tool != "knowledge.rank"):
        for candidate in ranking.differential:
            key = candidate.name.lower()
            if key in merged:
                if item.id not in merged[key].evidence:
                    merged[key].evidence.append(item.id)
                continue
            merged[key] = DiagnosisCandidate(
                rank=len(merged) + 1,
                name=candidate.name,
                codes=[code.model_copy() for code in candidate.codes],
                score=candidate.score,
                rationale=candidate.rationale,
                evidence=[item.id, *[e for e in candidate.evidence if e != item.id]],
            )
    return list(merged.values())
