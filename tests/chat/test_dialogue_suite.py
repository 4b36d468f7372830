"""Dialogue items in the suite runner: a scripted user converses with medagent's chat, fresh session per item."""

from __future__ import annotations

import json

from medagent.evals.runner import run_suite


def test_scripted_dialogue_item_is_scored_from_its_trace(tmp_path):
    patient_notes = {"id": "d1", "history": "hidden notes for a simulated patient"}
    item = {
        "id": "dialogue-1", "mode": "dialogue", "case": patient_notes,
        "turns": ["My baby boy has a distended abdomen and constipation.", "yes", "no", "no", "no", "no", "no"],
        "expected": {"answer_labels": ["Hirschsprung disease"]},
    }
    suite = tmp_path / "talk.jsonl"
    suite.write_text(json.dumps(item) + "\n")
    run = tmp_path / "run"
    run_suite(str(suite), out=run)
    score = json.loads((run / "scores.jsonl").read_text().splitlines()[0])
    assert score["completed"], score
    assert score["turns"] >= 2 and score["questions"] >= 1
    assert "rank" in score  # the final differential was scored against the expected diagnosis
    transcript = json.loads((run / "results" / "dialogue-1.dialogue.json").read_text())
    assert transcript[0]["role"] == "patient" and transcript[1]["question"]
    events = [json.loads(line) for line in (run / "traces" / "dialogue-1.jsonl").read_text().splitlines()]
    assert sum(1 for e in events if e["event"] == "result") == score["turns"]
