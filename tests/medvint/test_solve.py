"""`medagent solve` (in process, typer's runner) on the committed 2D CT slice case: with `[medvint] path` set, the rule
planner asks imaging.vqa the case's multiple-choice question, MedVInT-TD answers, and the report cites that evidence."""

from __future__ import annotations

import json

from .conftest import EXAMPLES

CASE = EXAMPLES / "ct_slice_vqa_case.json"


def test_solve_a_2d_image_case_answered_by_medvint_with_the_rule_planner(tmp_path, tiny_folder):
    config = tmp_path / "medagent.toml"
    config.write_text(
        f'cache_dir = "{tmp_path / "cache"}"\n[agent]\nplanner = "rule"\n[knowledge]\nenabled = false\n'
        f'[medvint]\npath = "{tiny_folder}"\ndevice = "cpu"\ndtype = "fp32"\nmax_new_tokens = 8\n'
    )
    out = tmp_path / "out"
    from typer.testing import CliRunner

    from medagent.cli.main import app

    done = CliRunner().invoke(app, ["solve", str(CASE), "-o", str(out), "--config", str(config)])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "result.json").read_text())
    vqa = [e for e in result["evidence"] if e["tool"] == "imaging.vqa"]
    assert vqa and all(not e["error"] and e["payload"]["model"] == "MedVInT-TD" for e in vqa)
    [chosen] = [e for e in vqa if "choices" in e["payload"]]
    payload = chosen["payload"]
    assert [c["text"] for c in payload["choices"]] == ["chest", "upper abdomen", "pelvis", "head"]
    assert payload["chosen"] in "ABCD" and payload["answer"] in {"chest", "upper abdomen", "pelvis", "head"}
    assert payload["backend"] == "medvint" and chosen["attachment"] == "slice"
    trace = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    planned = [e for e in trace if e["event"] == "tool_call" and e.get("tool") == "imaging.vqa" and "choices" in e["arguments"]]
    assert planned and planned[0]["origin"] == "rule"
    report = (out / "report.md").read_text()
    assert chosen["id"] in report and "MedVInT-TD" in report
