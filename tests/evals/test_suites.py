"""The built-in suites: multimodal expectations, robustness, AgentClinic leak redaction, multiple choice."""

from __future__ import annotations

import json
import re

from medagent.evals.builtin import agentclinic_items, leak_phrases, multimodal_items, redact_tests, robustness_items
from medagent.evals.runner import run_suite
from medagent.evals.scoring import failure_reasons

IMAGING = {"imaging.describe", "imaging.ct_quant", "imaging.segment", "imaging.vqa"}


def _scores(run) -> dict[str, dict]:
    return {s["id"]: s for s in map(json.loads, (run / "scores.jsonl").read_text().splitlines())}


def test_multimodal_expectations_follow_the_question():
    items = multimodal_items()
    assert len(items) >= 10
    for item in items:
        kinds = {a.kind.value for a in item.case.attachments}
        modalities = {a.modality for a in item.case.attachments}
        assert item.expected.required_tools or item.expected.forbidden_tools
        if not kinds:  # text only: no imaging, no speech
            assert IMAGING | {"speech.transcribe"} <= set(item.expected.forbidden_tools)
        if modalities == {"MR"}:
            assert "imaging.ct_quant" in item.expected.forbidden_tools
        if "audio" in kinds:
            assert "speech.transcribe" in item.expected.required_tools
        if "audio" not in kinds:
            assert "speech.transcribe" in item.expected.forbidden_tools
    # Every dictation in examples/audio becomes a case.
    assert any(item.id == "mm-audio-chest-pain" for item in items)


def test_multimodal_runs_offline(tmp_path, settings):
    run = tmp_path / "mm"
    run_suite("multimodal", out=run, settings=settings, quiet=True, item_ids=["mm-mr-describe", "mm-mr-asks-ct-numbers"])
    scores = _scores(run)
    assert scores["mm-mr-describe"]["required_recall"] == 1.0
    # The MR case that asks for CT numbers must not get the CT tool.
    assert scores["mm-mr-asks-ct-numbers"]["forbidden_called"] == []
    assert all(failure_reasons(s) == [] for s in scores.values())
    assert "## By category" in (run / "report.md").read_text()


def test_robustness_injections_and_bad_inputs(tmp_path, settings):
    items = robustness_items()
    injected = [i for i in items if i.meta.get("baseline") == "rb-mr-clean"]
    assert len(injected) >= 6 and len({i.meta["injection"] for i in injected}) == len(injected)
    for item in injected:  # the injection is hidden inside the history, the legitimate text kept
        assert item.meta["injection"] in item.case.history and "No jaundice." in item.case.history
    bad = [i.id for i in items if i.meta.get("category") == "bad input" and i.id != "rb-bad-mr-labelled-ct"]
    run = tmp_path / "rb"
    run_suite("robustness", out=run, settings=settings, quiet=True, workers=2,
              item_ids=["rb-mr-clean", *[i.id for i in injected[:4]], *bad])
    scores = _scores(run)
    assert not any(s.get("crashed") for s in scores.values())
    for item in injected[:4]:
        s = scores[item.id]
        assert s["plan_unchanged"] is True and s["findings_kept"] is True, (item.id, s.get("plan_added"))
        assert s["forbidden_called"] == [] and "pathology.classify" not in s["tools_called"]
    for item_id in bad:
        s = scores[item_id]
        # A clear one-line refusal naming the attachment, or error evidence: never a silent result.
        assert s.get("refused") or s.get("error_evidence"), s
        if s.get("refused"):
            assert "\n" not in s["failure"] and "attachments.0" in s["failure"]
        assert failure_reasons(s) == [], (item_id, failure_reasons(s))
    report = (run / "report.md").read_text()
    assert "plan_unchanged | 1 |" in report and "| crashed | 0 |" in report


AGENTCLINIC = [
    {"id": "ac_leak", "question": "PATIENT:\nHistory: Fussy infant, distended abdomen.\nTEST RESULTS:\nBarium Enema:\n"
     "  Findings: A transition zone, compatible with Hirschsprung's disease\nBlood: normal\n\nWhat is the most likely diagnosis?",
     "answer": "Hirschsprung disease"},
    {"id": "ac_partial", "question": "PATIENT:\nHistory: Premature newborn, grunting.\nTEST RESULTS:\nChest X-ray:\n"
     "  Findings: Ground-glass appearance, suggesting Respiratory Distress Syndrome (RDS)\n\nWhat is the most likely diagnosis?",
     "answer": "Neonatal Respiratory Distress Syndrome (NRDS)"},
    {"id": "ac_clean", "question": "PATIENT:\nHistory: Cough.\nTEST RESULTS:\nChest X-ray:\n  Findings: Lobar consolidation\n\n"
     "What is the most likely diagnosis?", "answer": "Pneumococcal pneumonia"},
]


def test_agentclinic_redacts_leaks_and_reports_the_leak_free_subset(tmp_path, settings):
    assert "respiratory distress" in leak_phrases("Neonatal Respiratory Distress Syndrome (NRDS)")
    redacted, found = redact_tests("TEST RESULTS:\nPCR: positive for pneumonia\n", "Pneumococcal pneumonia")
    assert found == [] and "positive for pneumonia" in redacted  # one generic word is not a leak
    data = tmp_path / "data"
    (data / "agentclinic").mkdir(parents=True)
    (data / "agentclinic" / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in AGENTCLINIC), encoding="utf-8")
    items = {item.id: item for item in agentclinic_items(data / "agentclinic" / "dev.jsonl")}
    assert "hirschsprung" not in items["ac_leak"].case.history.lower()
    assert "respiratory distress" not in items["ac_partial"].case.history.lower()
    assert "Blood: normal" in items["ac_leak"].case.history and "distended abdomen" in items["ac_leak"].case.history
    assert items["ac_clean"].meta["subset"] == ["leak-free"] and items["ac_leak"].meta["subset"] == []
    run = tmp_path / "ac"
    run_suite("agentclinic", out=run, data_dir=data, settings=settings, quiet=True)
    report = (run / "report.md").read_text()
    assert "2 cases named the diagnosis" in report
    assert re.search(r"\| all items \| 3 \|", report) and re.search(r"\| leak-free \| 1 \|", report)


def test_multiple_choice_without_an_llm_says_so(tmp_path, settings):
    data = tmp_path / "data"
    (data / "medqa").mkdir(parents=True)
    record = {"id": "q1", "question": "Which vitamin deficiency causes scurvy?", "options": {"A": "B12", "B": "C", "C": "D", "D": "K"},
              "answer_idx": "B", "answer": "C"}
    (data / "medqa" / "dev.jsonl").write_text(json.dumps(record), encoding="utf-8")
    run = tmp_path / "mc"
    run_suite("medqa", out=run, data_dir=data, settings=settings, quiet=True)
    score = _scores(run)["q1"]
    assert score["completed"] is False and "choice" not in score and "mc_correct" not in score
    assert score["failure"].startswith("no LLM configured") and "preset" in score["failure"]
    assert failure_reasons(score) == ["no LLM configured"]
