"""The Python API writes a case's outputs exactly as `medagent solve -o` does, with the same refusals."""

from __future__ import annotations

import json

import pytest

from medagent.agent.api import solve
from medagent.tools.config import Settings
from medagent.tools.errors import MedagentError

RULES = Settings.model_validate({"agent": {"planner": "rule"}})


def test_solve_with_out_writes_the_same_files_as_the_cli(run_cli, examples, tmp_path):
    result = solve(examples / "history_case.json", settings=RULES, out=tmp_path / "api")
    done = run_cli("solve", str(examples / "history_case.json"), "-o", str(tmp_path / "cli"), "--config", str(_rules_toml(tmp_path)))
    assert done.returncode == 0, done.stderr
    api_files = sorted(p.name for p in (tmp_path / "api").iterdir())
    assert api_files == sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert {"result.json", "report.md", "trace.jsonl"} <= set(api_files)
    written = json.loads((tmp_path / "api" / "result.json").read_text())
    assert written["differential"] == json.loads(result.model_dump_json())["differential"]
    assert [c["name"] for c in written["differential"]] == [
        c["name"] for c in json.loads((tmp_path / "cli" / "result.json").read_text())["differential"]]
    events = [json.loads(line)["event"] for line in (tmp_path / "api" / "trace.jsonl").read_text().splitlines()]
    assert events[0] == "case_loaded" and events[-2:] == ["result", "models"]
    assert "Research use only" in (tmp_path / "api" / "report.md").read_text()


def test_solve_with_out_refuses_a_folder_medagent_did_not_write(examples, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(MedagentError, match="mine"):
        solve(examples / "history_case.json", settings=RULES, out=mine, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine.partial")]


def _rules_toml(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[agent]\nplanner = "rule"\n')
    return path
