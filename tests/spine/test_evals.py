"""The suite runner: fresh state per item, resumable runs, scoring traces from another run."""

from __future__ import annotations

import json

import pytest

from medagent.evals.runner import run_suite, score_traces
from medagent.evals.scoring import diagnosis_rank
from medagent.evals.suite import Expected, load_suite_file
from medagent.tools.errors import MedagentError


def test_examples_suite_runs_scores_and_resumes(tmp_path):
    run = tmp_path / "run"
    report = run_suite("examples", out=run, limit=3, workers=2)
    scores = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert {s["id"] for s in scores} == {"ct-dicom", "ct-nifti", "mr-nifti"}
    assert all(s["completed"] and s["required_recall"] == 1.0 for s in scores)
    mr = next(s for s in scores if s["id"] == "mr-nifti")
    assert mr["forbidden_called"] == []
    assert "required_recall | 1.0" in report and (run / "report.md").exists()
    # Restarting skips finished items: nothing is appended.
    run_suite("examples", out=run, limit=3)
    assert len((run / "scores.jsonl").read_text().splitlines()) == 3
    # Scoring the traces alone (as another run would) gives the same tool metrics.
    rescored = score_traces(run, "examples")
    assert "required_recall | 1.0" in rescored


def test_user_suite_direct_and_pipeline_modes(tmp_path, examples):
    import shutil

    shutil.copytree(examples / "data", tmp_path / "data")
    case = {"id": "u1", "attachments": [{"id": "ct", "kind": "volume", "path": "data/ct_small.nii.gz", "modality": "CT"}]}
    items = [
        {"id": "d1", "mode": "direct", "case": case, "steps": [{"tool": "imaging.describe", "arguments": {"attachment": "ct"}}],
         "expected": {"required_tools": ["imaging.describe"]}},
        {"id": "p1", "mode": "pipeline", "case": case, "steps": [
            {"tool": "imaging.describe", "arguments": {"attachment": "ct"}},
            {"tool": "imaging.describe", "arguments": {"attachment": "$prev.orientation"}}]},
    ]
    suite = tmp_path / "mine.jsonl"
    suite.write_text("\n".join(json.dumps(i) for i in items))
    run = tmp_path / "run"
    run_suite(str(suite), out=run)
    scores = {s["id"]: s for s in map(json.loads, (run / "scores.jsonl").read_text().splitlines())}
    assert scores["d1"]["completed"] and scores["d1"]["required_recall"] == 1.0
    # The second pipeline step got an argument that is not an attachment id: rejected, reported.
    assert scores["p1"]["completed"] is False and "step 2 rejected" in scores["p1"]["failure"]


def test_bad_suite_lines_are_named(tmp_path):
    suite = tmp_path / "bad.jsonl"
    suite.write_text('{"id": "x", "mode": "direct", "case": {"id": "c"}}\n')
    with pytest.raises(MedagentError, match=r"bad.jsonl:1: .*direct item has exactly one step"):
        load_suite_file(suite)


def test_diagnosis_rank_matches_ids_and_labels():
    differential = [
        {"name": "Cystic fibrosis", "codes": [{"system": "OMIM", "id": "OMIM:219700"}]},
        {"name": "Hirschsprung disease", "codes": []},
    ]
    assert diagnosis_rank(differential, Expected(answer_ids=["OMIM:219700"])) == 1
    assert diagnosis_rank(differential, Expected(answer_labels=["hirschsprung  disease"])) == 2
    assert diagnosis_rank(differential, Expected(answer_labels=["pneumonia"])) is None
