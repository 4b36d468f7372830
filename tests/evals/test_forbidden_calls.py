"""A tool can be forbidden on one attachment only, and the score names the offending call."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medagent.evals.runner import run_suite

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_forbidden_call_on_one_attachment_is_reported(tmp_path):
    shutil.copy(EXAMPLES / "data" / "mr_small.nii.gz", tmp_path / "mr.nii.gz")
    shutil.copy(EXAMPLES / "data" / "ct_small.nii.gz", tmp_path / "ct.nii.gz")
    case = {"id": "mix", "attachments": [{"id": "ct", "kind": "volume", "path": "ct.nii.gz", "modality": "CT"},
                                         {"id": "mr", "kind": "volume", "path": "mr.nii.gz", "modality": "MR"}]}
    item = {"id": "mix", "case": case, "expected": {
        "required_tools": ["imaging.describe"],
        # describe is fine on the CT; on the MR this item forbids it (to prove the per-attachment rule bites).
        "forbidden_calls": [{"tool": "imaging.describe", "attachment": "mr"}, {"tool": "imaging.ct_quant", "attachment": "mr"}]}}
    suite = tmp_path / "mix.jsonl"
    suite.write_text(json.dumps(item) + "\n")
    run_suite(str(suite), out=tmp_path / "run")
    score = json.loads((tmp_path / "run" / "scores.jsonl").read_text().splitlines()[0])
    assert score["forbidden_called"] == ["imaging.describe(mr)"]  # ct_quant was (rightly) never run on the MR
