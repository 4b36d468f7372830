"""The LLM reporter on a real llama.cpp server: cited sentences, grounding verdicts, template fallback."""

from __future__ import annotations

import asyncio

from medagent.agent.llm.base import ChatResult
from medagent.agent.llm.http import HTTPBackend
from medagent.agent.llm_reporter import LLMReporter, merge_differential
from medagent.tools.config import LLMSettings, Settings
from medagent.tools.contracts import Case, DiagnosisCandidate, Evidence, GroundingVerdict
from medagent.tools.trace import TraceRecorder

SETTINGS = Settings(llm=LLMSettings(preset="openai-compatible", base_url="http://127.0.0.1:1", report_max_tokens=260))
CASE = Case(id="llm-report", history="61-year-old man with left upper quadrant pain, early satiety and night sweats.")
EVIDENCE = [
    Evidence(id="E1", tool="imaging.ct_quant", call_id="C1", attachment="ct", summary="CT: spleen volume 820 mL, enlarged spleen (splenomegaly)."),
    Evidence(id="E2", tool="imaging.describe", call_id="C2", attachment="ct", summary="CT volume 512 x 512 x 40 voxels, spacing 0.7 x 0.7 x 5.0 mm."),
    Evidence(
        id="E3", tool="knowledge.rank", call_id="C3", summary="Ranked diagnoses: 1. Chronic myeloid leukaemia (ORPHA:521), 2. Lymphoma.",
        payload={"differential": [
            {"name": "Chronic myeloid leukaemia", "codes": [{"system": "ORPHA", "id": "ORPHA:521"}], "score": 0.8,
             "rationale": "", "evidence": [], "phenotypes": []},
            {"name": "Lymphoma", "codes": [], "score": 0.4, "rationale": "", "evidence": [], "phenotypes": []},
        ], "present": ["HP:0001744"], "excluded": [], "conflicts": []},
    ),
]


def report_with(base_url: str):
    async def go():
        backend = HTTPBackend(base_url, "small", dialect="llamacpp", retries=0, timeout_s=300)
        try:
            trace = TraceRecorder(CASE.id)
            return await LLMReporter(backend, SETTINGS, trace).report(CASE, EVIDENCE, ["Attachment mr was not examined."]), trace
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_llm_report_is_cited_and_every_sentence_has_a_verdict(llama_server):
    draft, trace = report_with(llama_server)
    differential, findings, report, grounding = draft.differential, draft.findings, draft.report, draft.grounding
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
    draft, trace = report_with("http://127.0.0.1:9")
    differential, report, grounding = draft.differential, draft.report, draft.grounding
    assert any("LLM reporter failed" in e.message and "template reporter" in e.message for e in trace.events if e.event == "error")
    assert grounding.status == "checked" and grounding.sentences == len(report.sentences) > 0
    assert differential[0].name == "Chronic myeloid leukaemia"


def test_unranked_llm_diagnosis_is_labelled_unverified_and_never_above_the_tools():
    ranked = [DiagnosisCandidate(rank=1, name="Lymphoma", evidence=["E3"]), DiagnosisCandidate(rank=2, name="Myelofibrosis")]
    proposed = [{"name": "Healthy", "citations": []}, {"name": "myelofibrosis", "citations": []},
                {"name": "Gaucher disease", "citations": ["E1"]}]  # fmt: skip
    merged, note = merge_differential(proposed, ranked)
    assert [c.name for c in merged] == ["Lymphoma", "Myelofibrosis", "Healthy", "Gaucher disease"]
    assert [c.rank for c in merged] == [1, 2, 3, 4]
    assert "unverified" in merged[3].rationale and merged[3].evidence == ["E1"]
    assert "Healthy, Gaucher disease were proposed by the LLM" in note


def test_reporter_streams_its_sentences_from_a_real_server(llama_server):
    pieces: list[str] = []

    async def go():
        backend = HTTPBackend(llama_server, "small", dialect="llamacpp", retries=0, timeout_s=300)
        trace = TraceRecorder(CASE.id)
        try:
            out = await LLMReporter(backend, SETTINGS, trace, on_text=pieces.append).report(CASE, EVIDENCE, [])
        finally:
            await backend.aclose()
        return out, trace

    draft, trace = asyncio.run(go())
    report, grounding = draft.report, draft.grounding
    turn = next(e for e in trace.events if e.event == "llm_turn")
    reply = ChatResult(text=turn.completion, model="small")
    written = [s["text"].strip() for s in reply.json(salvage=True)["sentences"] if s["text"].strip()]
    assert written, "the model wrote no sentences"
    assert len(pieces) > len(written), "sentences arrived whole, not while they were decoded"
    streamed = [line.strip() for line in "".join(pieces).splitlines() if line.strip()]
    if reply.json_is_complete():
        assert streamed == written
    else:  # cut by report_max_tokens: the half-written last sentence was shown, then dropped, and the report says so
        assert streamed[: len(written)] == written and len(streamed) == len(written) + 1
        assert any("token limit" in line for line in report.limitations)
    # The report keeps the finished sentences (one copy of a repeated one), in order, before any restated evidence.
    first: dict[str, str] = {}
    for text in written:
        first.setdefault(" ".join(text.lower().split()), text)
    unique = list(first.values())
    assert [s.text for s in report.sentences[: len(unique)]] == unique
    # The streamed draft is then checked like any report: every sentence has a verdict.
    assert grounding.status == "checked" and all(s.verdict.value != "not_checked" for s in report.sentences)
