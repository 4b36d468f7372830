"""The LLM reporter on a real llama.cpp server: cited sentences, grounding verdicts, template fallback."""

from __future__ import annotations

import asyncio

from medagent.agent.llm.http import HTTPBackend
from medagent.agent.llm_reporter import LLMReporter, merge_differential
from medagent.tools.config import LLMSettings, Settings
from medagent.tools.contracts import Case, DiagnosisCandidate, Evidence, GroundingVerdict

SETTINGS = Settings(llm=LLMSettings(preset="openai-compatible", base_url="http://127.0.0.1:1", report_max_tokens=260))
CASE = Case(id="llm-report", history="61-year-old man with left upper quadrant pain, early satiety and night sweats.")
EVIDENCE = [
    Evidence(id="E1", tool="imaging.ct_quant", call_id="C1", attachment="ct", summary="CT: spleen volume 820 mL, enlarged spleen (splenomegaly)."),
    Evidence(id="E2", tool="imaging.describe", call_id="C2", attachment="ct", summary="CT volume 512 x 512 x 40 voxels, spacing 0.7 x 0.7 x 5.0 mm."),
    Evidence(
        id="E3", tool="knowledge.rank", call_id="C3", summary="Ranked diagnoses: 1. Chronic myeloid leukaemia (ORPHA:521), 2. Lymphoma.",
        payload={"differential": [
            {"name": "Chronic myeloid leukaemia", "codes": [{"system": "ORPHA", "id": "ORPHA:521"}], "score": 0.8},
            {"name": "Lymphoma", "codes": [], "score": 0.4},
        ]},
    ),
]


def report_with(base_url: str):
    async def go():
        backend = HTTPBackend(base_url, "small", dialect="llamacpp", retries=0, timeout_s=300)
        try:
            from medagent.tools.trace import TraceRecorder

            trace = TraceRecorder(CASE.id)
            return await LLMReporter(backend, SETTINGS, trace).report(CASE, EVIDENCE, ["Attachment mr was not examined."]), trace
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_llm_report_is_cited_and_every_sentence_has_a_verdict(llama_server):
    (differential, note, findings, report, grounding), trace = report_with(llama_server)
    turn = next(e for e in trace.events if e.event == "llm_turn")
    assert turn.role == "reporter" and turn.prompt_tokens > 100 and turn.completion_tokens > 0
    assert report.sentences and grounding.status == "checked" and grounding.sentences == len(report.sentences)
    assert all(s.verdict != GroundingVerdict.not_checked for s in report.sentences)
    assert all(set(s.citations) <= {"E1", "E2", "E3"} for s in report.sentences)  # constrained: no invented ids
    assert grounding.supported + grounding.flagged == len(report.sentences)
    print(f"reporter: {grounding.supported}/{grounding.sentences} sentences supported")
    assert "Attachment mr was not examined." in report.limitations
    # Tool codes survive whatever order the model chose.
    cml = next(c for c in differential if c.name == "Chronic myeloid leukaemia")
    assert cml.codes[0].id == "ORPHA:521" and [c.rank for c in differential] == list(range(1, len(differential) + 1))
    assert [f.evidence for f in findings] == [["E1"], ["E2"], ["E3"]]


def test_reporter_falls_back_to_the_template_and_still_checks():
    (differential, note, findings, report, grounding), trace = report_with("http://127.0.0.1:9")
    assert any("LLM reporter failed" in e.message and "template reporter" in e.message for e in trace.events if e.event == "error")
    assert grounding.status == "checked" and grounding.sentences == len(report.sentences) > 0
    assert differential[0].name == "Chronic myeloid leukaemia"


def test_unranked_llm_diagnosis_is_labelled_unverified():
    ranked = [DiagnosisCandidate(rank=1, name="Lymphoma", evidence=["E3"])]
    merged, note = merge_differential([{"name": "Gaucher disease", "citations": ["E1"]}, {"name": "lymphoma", "citations": []}], ranked)
    assert [c.name for c in merged] == ["Gaucher disease", "Lymphoma"]
    assert "unverified" in merged[0].rationale and "Gaucher disease" in note
