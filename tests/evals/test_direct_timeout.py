"""An eval item's fixed steps run through the same executor as `solve`: the same timeout cuts them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medagent.agent.api import solve
from medagent.evals.runner import run_suite
from medagent.tools.config import Settings
from medagent.tools.contracts import Case

AUDIO = Path(__file__).resolve().parents[2] / "examples" / "audio"
CASE = {"id": "slow-dictation", "attachments": [{"id": "a", "kind": "audio", "path": "chest_pain.wav"}]}


def test_a_direct_item_whose_tool_runs_too_long_is_cut_like_in_solve(tmp_path):
    shutil.copy(AUDIO / "chest_pain.wav", tmp_path / "chest_pain.wav")
    settings = Settings.model_validate({"agent": {"tool_timeout_s": 0.2, "planner": "rule"}})  # Whisper needs > 1 s here
    item = {"id": "slow", "mode": "direct", "case": CASE,
            "steps": [{"tool": "speech.transcribe", "arguments": {"attachment": "a"}}]}
    suite = tmp_path / "slow.jsonl"
    suite.write_text(json.dumps(item) + "\n")
    run_suite(str(suite), out=tmp_path / "run", settings=settings, quiet=True)

    evidence = json.loads((tmp_path / "run" / "results" / "slow.json").read_text())["evidence"]
    assert [(e["tool"], e["error"], e["summary"]) for e in evidence] == [
        ("speech.transcribe", True, "speech.transcribe timed out after 0.2 s")]
    trace = [json.loads(line) for line in (tmp_path / "run" / "traces" / "slow.jsonl").read_text().splitlines()]
    assert any(e["event"] == "error" and "timed out" in e["message"] for e in trace)

    solved = solve(Case.model_validate(CASE), case_dir=tmp_path, settings=settings)
    transcripts = [e for e in solved.evidence if e.tool == "speech.transcribe"]
    assert [(e.error, e.summary) for e in transcripts] == [(True, evidence[0]["summary"])]
