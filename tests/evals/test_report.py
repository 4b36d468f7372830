"""Reports, comparison and trace re-scoring on a small user suite (rule planner, no LLM)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medagent.evals.report import compare_runs
from medagent.evals.runner import run_suite, score_traces
from medagent.evals.scoring import failure_reasons
from medagent.tools.errors import MedagentError

REPO = Path(__file__).resolve().parents[2]


def _suite(folder: Path, mr_required: list[str]) -> Path:
    shutil.copy(REPO / "examples" / "data" / "mr_small.nii.gz", folder / "mr.nii.gz")
    mr = {"id": "mr", "kind": "volume", "path": "mr.nii.gz", "modality": "MR"}
    items = [
        {"id": "mr-describe", "case": {"id": "c1", "question": "Describe the MR.", "attachments": [mr]},
         "expected": {"required_tools": mr_required, "forbidden_tools": ["imaging.ct_quant"]}, "meta": {"category": "MR"}},
        {"id": "text-dx", "case": {"id": "c2", "history": "Distended abdomen, constipation since birth."},
         "expected": {"answer_labels": ["Hirschsprung disease"], "forbidden_tools": ["imaging.describe"]},
         "meta": {"category": "text"}, "group": "g1"},
        {"id": "missing", "case": {"id": "c3", "attachments": [{"id": "ct", "kind": "volume", "path": "gone.nii.gz"}]},
         "meta": {"category": "bad input", "expect": "refusal"}, "group": "g1"},
    ]
    path = folder / "mini.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items), encoding="utf-8")
    return path


def _scores(run: Path) -> dict[str, dict]:
    return {s["id"]: s for s in map(json.loads, (run / "scores.jsonl").read_text().splitlines())}


def test_report_compare_and_rescore(tmp_path, settings):
    suite_a = _suite(tmp_path, ["imaging.describe"])
    run_a = tmp_path / "run-a"
    summary = run_suite(str(suite_a), out=run_a, settings=settings, quiet=True)
    scores = _scores(run_a)
    assert scores["mr-describe"]["required_recall"] == 1.0 and scores["mr-describe"]["forbidden_called"] == []
    assert scores["mr-describe"]["plan"] == ["imaging.describe(mr)"]
    # The refusal is a clear one-line error naming the attachment, and counts as handled, not as a crash.
    assert scores["missing"]["refused"] and "attachments.0 (ct)" in scores["missing"]["failure"]
    assert "\n" not in scores["missing"]["failure"] and failure_reasons(scores["missing"]) == []
    # No ranking tool ran, so no diagnosis: the taxonomy says so instead of calling it a wrong answer.
    assert failure_reasons(scores["text-dx"]) == ["no diagnosis proposed"]
    assert "| passed | 2 |" in summary

    report = (run_a / "report.md").read_text()
    for heading in ("## Summary", "## By category", "## By group", "## Latency", "## Tool usage", "## Failure taxonomy", "## Items"):
        assert heading in report
    assert "| no diagnosis proposed | 1 |" in report
    assert (run_a / "plots" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    page = (run_a / "report.html").read_text()
    # Self-contained: every image is inline, nothing is fetched from elsewhere.
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in page and "href=" not in page

    # The same cases with a stricter expectation: the MR item now misses a required tool.
    folder_b = tmp_path / "b"
    folder_b.mkdir()
    run_b = tmp_path / "run-b"
    run_suite(str(_suite(folder_b, ["imaging.describe", "imaging.ct_quant"])), out=run_b, settings=settings, quiet=True)
    text, md_path, html_path = compare_runs([run_a, run_b], tmp_path / "cmp")
    assert "| required_recall | 1 | 0.5 | -0.5 |" in text
    assert re.search(r"\| mr-describe \| pass \| .*required tool not called", text)
    assert md_path.exists() and "data:image/png;base64," in html_path.read_text()

    # Scoring the traces alone (as a different run would) reproduces the tool metrics.
    rescored = score_traces(run_a, str(suite_a), out=tmp_path / "rescored")
    assert "| required_recall | 1.0 |" in rescored
    assert _scores(tmp_path / "rescored")["mr-describe"]["plan"] == ["imaging.describe(mr)"]
    assert (tmp_path / "rescored" / "report.html").exists()


def test_compare_command_and_bad_folders(tmp_path, settings):
    with pytest.raises(MedagentError, match="not a run folder"):
        compare_runs([tmp_path, tmp_path])
    run = tmp_path / "run"
    run_suite(str(_suite(tmp_path, ["imaging.describe"])), out=run, settings=settings, quiet=True, item_ids=["missing"])
    medagent = Path(sys.executable).parent / "medagent"
    done = subprocess.run([str(medagent), "eval", "compare", str(run), str(run), "-o", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "0 changed between pass and fail" in done.stdout and (tmp_path / "c" / "compare.html").exists()


def test_crashes_are_findings_not_the_end_of_a_run():
    crashed = {"id": "x", "completed": False, "crashed": True, "failure": "crash: KeyError: 'payload'"}
    assert failure_reasons(crashed) == ["crash"]
    from medagent.evals.scoring import aggregate

    summary = aggregate([crashed, {"id": "y", "completed": True}])
    assert summary["crashed"] == 1 and summary["passed"] == 1


def test_export_sft_uses_the_one_converter(tmp_path, settings):
    from medagent.evals.runner import export_sft

    run = tmp_path / "run"
    suite = _suite(tmp_path, ["imaging.describe"])
    run_suite(str(suite), out=run, settings=settings, quiet=True, item_ids=["mr-describe"])
    out = tmp_path / "sft" / "examples.jsonl"
    message = export_sft(run, out)  # the run folder knows its suite
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    assert "wrote 1 training examples from 1 traces" in message
    # The rule planner's step 1 becomes a chat example whose target is the call that ran.
    target = json.loads(examples[0]["messages"][-1]["content"])
    assert target["calls"][0]["tool"] == "imaging.describe" and target["calls"][0]["arguments"] == {"attachment": "mr"}


def test_diagnosis_labels_match_through_the_knowledge_graph():
    from medagent.evals.scoring import diagnosis_rank, with_graph_ids
    from medagent.evals.suite import Expected
    from medagent.tools.config import Settings

    expected = with_graph_ids(Expected(answer_labels=["Myasthenia gravis"]), Settings())
    assert {"OMIM:254200", "ORPHA:589"} <= set(expected.answer_ids)
    # A candidate named differently but coded with the disease's id now counts, at its rank.
    differential = [{"name": "Lambert-Eaton syndrome", "codes": []},
                    {"name": "MG, generalised", "codes": [{"system": "ORPHA", "id": "ORPHA:589"}]}]
    assert diagnosis_rank(differential, expected) == 2
    assert diagnosis_rank(differential, Expected(answer_labels=["Myasthenia gravis"])) is None
