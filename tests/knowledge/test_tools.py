"""The three tools through the registry, and the planner rules that call them."""

from __future__ import annotations

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
    linked = Evidence(id="E1", tool="knowledge.link", call_id="C1", summary="s",
                      payload={"present": [{"id": "HP:0001250"}], "excluded": [{"id": "HP:0001945"}]})  # fmt: skip
    heard = Evidence(id="E2", tool="speech.transcribe", call_id="C2", summary="s",
                     payload={"transcript": "the patient has a fever"})  # fmt: skip
    follow = [p for rule in FOLLOW_UP_RULES for p in rule(case, TOOLS, [linked, heard], [])]
    assert ("knowledge.rank", {"present": ["HP:0001250"], "excluded": ["HP:0001945"], "evidence": ["E1"]}) == follow[0][:2]
    assert follow[1][0] == "knowledge.link" and follow[1][1] == {"text": "the patient has a fever", "source": "E2"}
    assert not [p for rule in FOLLOW_UP_RULES for p in rule(case, [], [linked, heard], [])]
