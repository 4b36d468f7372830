"""End to end: `medagent solve` on the committed CT case with a tiny RadDiag checkpoint in the published layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def test_solve_with_the_rule_planner_diagnoses_the_ct_with_icd10_codes(tmp_path: Path, early_dir: Path) -> None:
    # The published layout: a flat state_dict without prefix in pytorch_model.bin (plus the tiny config file).
    state = torch.load(early_dir / "pytorch_model.bin", weights_only=True)
    assert "vitFuse.mod_embed" in state and not any(k.startswith("module.") for k in state)
    case_dir = tmp_path / "case"
    shutil.copytree(REPO / "examples" / "data", case_dir / "data")
    shutil.copy(REPO / "examples" / "ct_nifti_case.json", case_dir / "case.json")
    config = tmp_path / "medagent.toml"
    config.write_text(f'[agent]\nplanner = "rule"\n\n[raddiag]\npath = "{early_dir}"\ntop = 3\n')
    out = tmp_path / "out"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "medagent"), "solve", str(case_dir / "case.json"), "-o", str(out),
         "--config", str(config)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imaging.diagnose(attachment=ct)" in done.stdout + done.stderr
    result = json.loads((out / "result.json").read_text())
    (item,) = [e for e in result["evidence"] if e["tool"] == "imaging.diagnose"]
    assert not item["error"] and item["attachment"] == "ct"
    codes = json.loads((REPO / "specialists" / "raddiag" / "ICD_dict_1218.json").read_text(encoding="utf-8"))
    codes = {name.replace("\u00a0", " "): code for name, code in codes.items()}
    disorders = item["payload"]["disorders"]
    assert len(disorders) == 3 and all(d["icd10"] == codes.get(d["disorder"]) for d in disorders)
    assert item["payload"]["icd10_codes"] and all(code in item["summary"] for code in item["payload"]["icd10_codes"])
    assert item["payload"]["scans"][0]["modality_id"] == 1  # the case's first CT
    calls = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    (call,) = [c for c in calls if c["event"] == "tool_call" and c.get("tool") == "imaging.diagnose"]
    assert call["origin"] == "rule"
    # The rules then look up the top disorder's ICD-10-CM category in the knowledge tools.
    (lookup,) = [e for e in result["evidence"] if e["tool"] == "knowledge.lookup"]
    assert lookup["summary"].startswith(f"ICD-10-CM {item['payload']['icd10_codes'][0]}:")
    assert f"[{item['id']}]" in (out / "report.md").read_text()
    # The differential carries the imaging candidates, marked as such, with their codes and the evidence id.
    from_imaging = [c for c in result["differential"] if c["rationale"].startswith("from imaging: RadDiag")]
    assert [c["name"] for c in from_imaging] == [d["disorder"] for d in disorders]
    assert all(item["id"] in c["evidence"] for c in from_imaging)
    sources = ["imaging" if c["rationale"].startswith("from imaging") else "phenotypes" for c in result["differential"]]
    assert "phenotypes" in sources and sources == sorted(sources, key=lambda s: s == "imaging")  # the phenotype ranking leads
    assert [c["codes"][0]["id"] for c in from_imaging if c["codes"]] == [d["icd10"] for d in disorders if d["icd10"]]
    assert any("raddiag" in str(v).lower() for v in result["models"].values()) or "RadDiag" in json.dumps(result["models"])
