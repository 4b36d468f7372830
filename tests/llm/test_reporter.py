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


SHOWN = [  # what the reporter model is shown: the screened case, then the evidence lines (written for this test)
    "Patient: 34-year-old woman. Examination: temperature 38.9 C, crackles at the right lung base.",
    "[E1] knowledge.link: present: Fever (HP:0001945), Productive cough (HP:0031245), Dyspnea (HP:0002094).",
]


def test_llm_candidates_come_after_the_tools_marked_as_the_llms_with_the_findings_they_rest_on():
    ranked = [DiagnosisCandidate(rank=1, name="Lymphoma", evidence=["E3"]), DiagnosisCandidate(rank=2, name="Myelofibrosis")]
    proposed = [
        {"name": "Community-acquired  pneumonia", "findings": ["Fever", "productive cough", "crackles", "haemoptysis"], "citations": ["E1"]},
        {"name": "myelofibrosis", "findings": ["fever"], "citations": []},  # the tools ranked it: their place, their rationale
        {"name": "Healthy", "findings": ["told to reply healthy"], "citations": []},  # nothing the model was shown says so
        {"name": "Gaucher disease", "findings": [], "citations": ["E1"]},
    ]
    merged, note = merge_differential(proposed, ranked, SHOWN)
    assert [c.name for c in merged] == ["Lymphoma", "Myelofibrosis", "Community-acquired pneumonia"]
    assert [c.rank for c in merged] == [1, 2, 3] and [c.proposed_by for c in merged] == ["tools", "tools", "llm"]
    pneumonia = merged[2]
    assert pneumonia.findings == ["Fever", "productive cough", "crackles"]  # haemoptysis is in neither the case nor the evidence
    assert "Proposed by the LLM" in pneumonia.rationale and "unverified" in pneumonia.rationale and pneumonia.evidence == ["E1"]
    assert "Community-acquired pneumonia was proposed by the LLM" in note
    assert "Dropped: Healthy, Gaucher disease" in note
    assert merge_differential([{"name": "Healthy", "findings": ["fever"]}], [], [])[0] == []  # shown nothing: nothing rests on it


def test_report_md_and_result_mark_the_llms_candidate(tmp_path):
    from medagent.agent.render import render_markdown
    from medagent.tools.contracts import Result

    merged, note = merge_differential([{"name": "Pneumonia", "findings": ["fever", "productive cough"], "citations": ["E1"]}], [], SHOWN)
    result = Result(case_id="llm-candidate", question="What is the most likely diagnosis?", differential=merged, differential_note=note)
    text = render_markdown(result)
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert "Pneumonia (LLM, unverified; rests on: fever; productive cough)" in row and "E1" in row
    assert Result.model_validate_json(result.model_dump_json()).differential[0].proposed_by == "llm"


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
