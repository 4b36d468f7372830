"""`medagent solve` (in process, typer's runner) on a committed 2D CT slice: the rule planner sends it to imaging.classify, whose evidence the
result cites, with labels taken from the case question."""

from __future__ import annotations

import json
from pathlib import Path

CASE = Path(__file__).resolve().parents[2] / "tests/data/pmcclip/case_ct_slice/case.json"


def test_solve_a_2d_image_case_with_the_rule_planner(tmp_path, pmcclip_dir):
    config = tmp_path / "medagent.toml"
    config.write_text(
        f'cache_dir = "{tmp_path / "cache"}"\n[agent]\nplanner = "rule"\n[knowledge]\nenabled = false\n'
        f'[pmcclip]\npath = "{pmcclip_dir}"\n'
    )
    out = tmp_path / "out"
    from typer.testing import CliRunner

    from medagent.cli.main import app

    done = CliRunner().invoke(app, ["solve", str(CASE), "-o", str(out), "--config", str(config)])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "result.json").read_text())
    [item] = [e for e in result["evidence"] if e["tool"] == "imaging.classify"]
    assert not item["error"] and item["attachment"] == "slice"
    assert item["payload"]["label_source"] == "question"
    assert {r["label"] for r in item["payload"]["ranked"]} == {"chest CT", "abdominal CT"}
    assert item["payload"]["image_size"] == [244, 202]
    calls = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    planned = [c for c in calls if c["event"] == "tool_call" and c.get("tool") == "imaging.classify"]
    assert planned and planned[0]["origin"] == "rule"
    assert item["id"] in (out / "report.md").read_text()
