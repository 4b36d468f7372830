"""The grounding checker on the committed labelled set, and its verdicts on whole reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medagent.agent.grounding import GroundingChecker
from medagent.agent.render import render_markdown
from medagent.tools.contracts import Evidence, GroundingVerdict, Report, ReportSentence, Result

PAIRS = Path(__file__).resolve().parents[1] / "data" / "llm" / "grounding_pairs.jsonl"


@pytest.fixture(scope="module")
def checker() -> GroundingChecker:
    return GroundingChecker()


def evidence(text: str, id_: str = "E1", error: bool = False) -> Evidence:
    return Evidence(id=id_, tool="imaging.describe", call_id="C1", summary=text, error=error)


def test_labelled_pairs_precision_recall_and_mismatches(checker):
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 50
    kinds = {r["kind"] for r in rows}
    assert {"negation", "laterality", "number"} <= kinds
    tp = fp = fn = 0
    missed_mismatches = []
    for row in rows:
        verdict, _ = checker.check(row["sentence"], ["E1"], {"E1": evidence(row["evidence"])})
        accepted = verdict == GroundingVerdict.supported
        tp += accepted and row["supported"]
        fp += accepted and not row["supported"]
        fn += (not accepted) and row["supported"]
        if accepted and not row["supported"] and row["kind"] in {"negation", "laterality", "number"}:
            missed_mismatches.append(row["sentence"])
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"grounding on {len(rows)} labelled pairs: precision {precision:.3f}, recall {recall:.3f}")
    assert not missed_mismatches  # every negation / laterality / number swap is rejected
    assert precision >= 0.9 and recall >= 0.85


def test_report_verdicts_flag_and_keep_unsupported_sentences(checker):
    items = [evidence("CT abdomen: 3 cm mass in the left kidney.", "E1"), evidence("speech.transcribe timed out", "E2", error=True)]
    sentences = [
        ReportSentence(text="A 3 cm mass is seen in the left kidney.", citations=["E1"]),
        ReportSentence(text="An 8 cm mass is seen in the left kidney.", citations=["E1"]),
        ReportSentence(text="The patient has a history of smoking.", citations=[]),
        ReportSentence(text="The lungs are clear.", citations=["E7"]),
        ReportSentence(text="The recording mentions cough.", citations=["E2"]),
    ]
    checked, summary = checker.check_report(sentences, items)
    verdicts = [s.verdict for s in checked]
    assert verdicts == [
        GroundingVerdict.supported, GroundingVerdict.unsupported, GroundingVerdict.no_citation,
        GroundingVerdict.unknown_citation, GroundingVerdict.unsupported,
    ]
    assert "8" in checked[1].reason and "E7" in checked[3].reason
    assert summary.status == "checked" and summary.sentences == 5 and summary.supported == 1 and summary.flagged == 4
    result = Result(case_id="c", question="q", report=Report(sentences=checked), evidence=items, grounding=summary)
    markdown = render_markdown(result)
    assert "An 8 cm mass" in markdown and "unsupported" in markdown  # kept, and marked
