"""The three tools through the registry, and the planner rules that call them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medagent.tools.config import KnowledgeSettings, Settings
from medagent.tools.contracts import Case, Evidence, Measurement, Phenotypes
from medagent.tools.errors import ToolError
from medagent.tools.knowledge import FIRST_STEP_RULES, FOLLOW_UP_RULES, TOOLS
from medagent.tools.registry import Registry, ToolContext

SETTINGS = Settings(knowledge=KnowledgeSettings(dense=False))  # the dense index has its own test


def _run(name: str, arguments: dict, case: Case, tmp_path: Path):
    registry = Registry(SETTINGS, TOOLS)
    tool = registry.tools[name]
    assert registry.unavailable_reason(name) is None
    args = tool.args.model_validate(arguments)
    return tool.run(args, ToolContext(case, tmp_path, tmp_path, SETTINGS))


def test_link_tool_returns_spans_and_derived_lab_phenotypes(tmp_path, graph):
    case = Case(id="c1", patient={"age_years": 40}, history="Recurrent seizures; no fever.",
                findings=[Measurement(name="haemoglobin", value=8.9, unit="g/dL")])  # fmt: skip
    [evidence] = _run("knowledge.link", {"text": case.history}, case, tmp_path)
    payload = evidence.payload
    assert [m["id"] for m in payload["present"]] == ["HP:0001250"]
    assert payload["present"][0]["span"] == [10, 18]
    assert [m["id"] for m in payload["excluded"]] == ["HP:0001945"]
    assert payload["derived"][0]["id"] == "HP:0001903" and "below" in payload["derived"][0]["reason"]
    assert payload["present_ids"] == ["HP:0001250", "HP:0001903"]
    assert "Seizure" in evidence.summary and "Anemia" in evidence.summary


def test_rank_tool_payload_is_a_differential_the_reporter_reads(tmp_path, graph):
    from medagent.tools.contracts import DiagnosisCandidate

    case = Case(id="c2")
    present = ["HP:0001166", "HP:0001083", "HP:0002616"]
    [evidence] = _run("knowledge.rank", {"present": present, "evidence": ["E1"]}, case, tmp_path)
    differential = evidence.payload["differential"]
    assert len(differential) == 10
    top = differential[0]
    assert top["codes"][0]["system"] in {"OMIM", "ORPHA"} and "Marfan" in top["name"]
    assert top["evidence"] == ["E1"] and "Ectopia lentis" in top["rationale"]
    assert "% of the disease's known features" in top["rationale"]
    DiagnosisCandidate(rank=1, **{k: v for k, v in top.items() if k != "phenotypes"})


def test_rank_tool_bad_ids_become_tool_errors(tmp_path, graph):
    with pytest.raises(ToolError, match="HP:9999999"):
        _run("knowledge.rank", {"present": ["HP:9999999"]}, Case(id="c3"), tmp_path)


def test_lookup_tool_answers_terms_diseases_and_codes(tmp_path, graph):
    case = Case(id="c4")
    [term] = _run("knowledge.lookup", {"concept": "HP:0001903"}, case, tmp_path)
    assert term.payload["label"] == "Anemia" and term.payload["icd10cm"] == "D64.9"
    assert term.payload["definition"] and term.payload["parents"]
    [by_name] = _run("knowledge.lookup", {"concept": "epileptic seizure"}, case, tmp_path)
    assert by_name.payload["id"] == "HP:0001250"
    [disease] = _run("knowledge.lookup", {"concept": "OMIM:154700"}, case, tmp_path)
    assert disease.payload["name"] == "Marfan syndrome"
    [code] = _run("knowledge.lookup", {"concept": "D64.9"}, case, tmp_path)
    assert code.payload["description"] == "Anemia, unspecified"
    [named] = _run("knowledge.lookup", {"concept": "Marfan syndrome"}, case, tmp_path)  # a disease in words
    assert named.payload["id"].startswith(("OMIM:", "ORPHA:")) and named.payload["name"].lower() == "marfan syndrome"
    # A phrase (as a small planner LLM passes it) is looked up through the phenotypes it mentions.
    mentioned = _run("knowledge.lookup", {"concept": "cough and fever for two weeks, night sweats"}, case, tmp_path)
    assert {e.payload["label"] for e in mentioned} >= {"Cough", "Fever"} and len(mentioned) <= 3
    assert all(e.summary.startswith("'cough and fever for two weeks, night sweats' is not one concept") for e in mentioned)
    with pytest.raises(ToolError, match="not an HPO.*mentions no phenotype"):
        _run("knowledge.lookup", {"concept": "zzzz qqqq"}, case, tmp_path)


def test_rules_link_history_rank_codes_and_follow_up():
    case = Case(id="c5", history="Seizures.", phenotypes=Phenotypes(present=["HP:0001250"], excluded=["HP:0001945"]))
    proposals = [p for rule in FIRST_STEP_RULES for p in rule(case, TOOLS, [], [])]
    assert [p[0] for p in proposals] == ["knowledge.link", "knowledge.rank"]
    assert proposals[1][1]["excluded"] == ["HP:0001945"]
    linked = _linked("E1", "history", ["HP:0001250"], ["HP:0001945"])
    heard = _heard("E2", "the patient has a fever")
    follow = [p for rule in FOLLOW_UP_RULES for p in rule(case, TOOLS, [linked, heard], [])]
    assert ("knowledge.rank", {"present": ["HP:0001250"], "excluded": ["HP:0001945"], "evidence": ["E1"]}) == follow[0][:2]
    assert follow[1][0] == "knowledge.link" and follow[1][1] == {"text": "the patient has a fever", "source": "E2"}
    assert not [p for rule in FOLLOW_UP_RULES for p in rule(case, [], [linked, heard], [])]


def _mention(term: str) -> dict:
    return {"id": term, "label": term, "span": [0, 1], "text": term, "method": "exact", "score": 1.0}


def _linked(eid: str, source: str, present: list[str], excluded: list[str]) -> Evidence:
    return Evidence(id=eid, tool="knowledge.link", call_id=f"C{eid}", summary="s", payload={
        "source": source, "present": [_mention(t) for t in present], "excluded": [_mention(t) for t in excluded],
        "derived": [], "present_ids": present, "excluded_ids": excluded})  # fmt: skip


def _heard(eid: str, text: str) -> Evidence:
    return Evidence(id=eid, tool="speech.transcribe", call_id=f"C{eid}", summary="s", payload={
        "transcript": text, "segments": [], "language": "en", "language_probability": None, "duration_s": 2.0,
        "silent_s": 0.0, "runtime": "ctranslate2", "model": "whisper-base", "real_time_factor": 0.1, "notes": []})  # fmt: skip


def test_rank_reconciles_sources_by_precedence_and_states_each_conflict(tmp_path, graph):
    """Typed 'abdominal pain' against a transcript that denies pain: ranked anyway, the history wins and
    the conflict is stated with both evidence ids; a coded exclusion beats a transcript's 'present'."""
    heard = _heard("E1", "no pain")
    history = _linked("E2", "history", ["HP:0002027"], [])  # Abdominal pain
    spoken = _linked("E3", "E1", ["HP:0012735"], ["HP:0012531"])  # Cough present, Pain denied
    case = Case(id="c6", history="Abdominal pain.", phenotypes=Phenotypes(excluded=["HP:0012735"]))
    registry = Registry(SETTINGS, TOOLS)
    tool = registry.tools["knowledge.rank"]
    args = tool.args.model_validate({"present": ["HP:0002027", "HP:0012735"], "excluded": ["HP:0012531", "HP:0012735"],
                                     "evidence": ["E2", "E3"]})  # fmt: skip
    [ranked] = tool.run(args, ToolContext(case, tmp_path, tmp_path, SETTINGS, [heard, history, spoken]))
    assert not ranked.error and ranked.payload["differential"]
    conflicts = {c["term"]: c for c in ranked.payload["conflicts"]}
    assert conflicts["HP:0012531"]["kept"] == "present"  # history (tier 1) over transcript (tier 3)
    assert conflicts["HP:0012531"]["statement"] == (
        "Abdominal pain (a kind of Pain): present in the history [E2], denied in the transcript [E3]; kept as present")
    assert conflicts["HP:0012735"]["kept"] == "absent"  # the coded exclusion over the transcript's cough
    assert "denied in the coded phenotypes" in conflicts["HP:0012735"]["statement"]
    assert ranked.payload["present"] == ["HP:0002027"] and ranked.payload["excluded"] == ["HP:0012735"]
    assert "conflicting sources reconciled" in ranked.summary


def test_rank_within_one_tier_present_wins(tmp_path, graph):
    history = _linked("E1", "history", ["HP:0001250"], ["HP:0001250"])
    case = Case(id="c7", history="Seizures. No seizures.")
    [ranked] = _run_with("knowledge.rank", {"present": ["HP:0001250"], "excluded": ["HP:0001250"], "evidence": ["E1"]},
                         case, tmp_path, [history])  # fmt: skip
    [conflict] = ranked.payload["conflicts"]
    assert conflict["kept"] == "present" and conflict["statement"].startswith("Seizure: present in the history [E1]")


def _run_with(name: str, arguments: dict, case: Case, tmp_path: Path, evidence: list[Evidence]):
    tool = Registry(SETTINGS, TOOLS).tools[name]
    return tool.run(tool.args.model_validate(arguments), ToolContext(case, tmp_path, tmp_path, SETTINGS, evidence))


def test_calls_that_cannot_succeed_are_rejected_before_they_run(graph):
    """A lookup of a word no catalogue knows and that names no phenotype, or a ranking of an unknown id,
    is a rejected call with the reason (what the planner sees), not error evidence."""
    from medagent.tools.contracts import ToolCall

    registry = Registry(SETTINGS, TOOLS)
    case = Case(id="c8", history="Cough.")
    _, reason = registry.validate(ToolCall(call_id="C1", tool="knowledge.lookup", arguments={"concept": "abdominal CT"}), case)
    assert reason and "is not an HPO/OMIM/ORPHA id" in reason
    args, reason = registry.validate(ToolCall(call_id="C1", tool="knowledge.lookup", arguments={"concept": "HP:0001250"}), case)
    assert reason is None and args.concept == "HP:0001250"
    _, reason = registry.validate(ToolCall(call_id="C1", tool="knowledge.link",
                                           arguments={"text": "haemoglobin 10.2 g/dL; platelets 95", "source": "findings"}), case)  # fmt: skip
    assert reason == "knowledge.link (findings): no phenotype found in the text"
    _, reason = registry.validate(ToolCall(call_id="C1", tool="knowledge.rank", arguments={"present": ["HP:9999999"]}), case)
    assert reason == "knowledge.rank: unknown HPO term id(s): HP:9999999 (expected ids like HP:0001250)"


@pytest.mark.parametrize(("heard", "no_speech"), [(0.3, 0.02), (0.8, 0.02), (0.8, 0.9)])
def test_a_negation_heard_with_low_confidence_is_reported_not_used(tmp_path, graph, heard, no_speech):
    segments = [{"start": 0.0, "end": 2.0, "text": "I have a bad headache.", "confidence": 0.9, "avg_logprob": -0.105,
                 "no_speech_prob": 0.01},
                {"start": 2.0, "end": 4.5, "text": "I do not have any chest pain.", "confidence": heard,
                 "avg_logprob": round(math.log(heard), 3), "no_speech_prob": no_speech}]  # fmt: skip
    transcript = " ".join(s["text"] for s in segments)
    speech = Evidence(id="E1", tool="speech.transcribe", call_id="C1", summary="Speech", attachment="a1", payload={
        "transcript": transcript, "segments": segments, "language": "en", "language_probability": 0.99,
        "duration_s": 4.5, "silent_s": 0.0, "runtime": "faster-whisper", "model": "base", "real_time_factor": 0.2,
        "notes": []})  # fmt: skip
    case = Case(id="c9")
    registry = Registry(SETTINGS, TOOLS)
    tool = registry.tools["knowledge.link"]
    [evidence] = tool.run(tool.args.model_validate({"text": transcript, "source": "E1"}),
                          ToolContext(case, tmp_path, tmp_path, SETTINGS, evidence_so_far=[speech]))
    payload = evidence.payload
    # each phrase carries the figures of the segment it was heard in
    assert [(m["id"], m["segment_confidence"], m["segment_avg_logprob"], m["segment_no_speech_prob"])
            for m in payload["present"]] == [("HP:0002315", 0.9, -0.105, 0.01)]  # fmt: skip
    if heard < SETTINGS.speech.trust_negation_from or no_speech > 0.6:
        assert "HP:0100749" not in payload["excluded_ids"] and payload["excluded"] == []
        assert [(m["id"], m["segment_confidence"], m["segment_no_speech_prob"]) for m in payload["doubtful"]] == [
            ("HP:0100749", heard, no_speech)]
        said = f"segment confidence {heard:.2f}" + (f", no-speech probability {no_speech:.2f}" if no_speech > 0.6 else "")
        assert f"not used, heard with low confidence: no chest pain ('chest pain', {said})" in evidence.summary
    else:
        assert payload["excluded_ids"] == ["HP:0100749"] and payload["doubtful"] == []
        assert "low confidence" not in evidence.summary


def test_rank_tool_weighs_the_patients_sex_and_says_so(tmp_path, graph):
    """Duchenne muscular dystrophy (X-linked recessive) is the picture of a boy with these signs; for a girl the same
    signs cost it the inheritance weight, and its rationale says why."""
    signs = {"present": ["HP:0003391", "HP:0003707", "HP:0003236", "HP:0003701"], "evidence": ["E1"]}

    def duchenne(sex: str) -> dict:
        [evidence] = _run("knowledge.rank", signs, Case(id=f"dmd-{sex}", patient={"sex": sex, "age_years": 6}), tmp_path)
        return next(c for c in evidence.payload["differential"] if c["codes"][0]["id"] == "OMIM:310200")

    boy, girl = duchenne("male"), duchenne("female")
    assert "inheritance unlikely for the patient's sex" not in boy["rationale"]
    assert "against: inheritance unlikely for the patient's sex (X-linked recessive inheritance)" in girl["rationale"]
    assert girl["score"] < boy["score"]
