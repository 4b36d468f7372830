"""Behaviour is kept: a rule-planner solve of the multimodal example reproduces the committed result.json.

tests/data/golden/multimodal_rule_result.json was written by `medagent solve examples/multimodal_case.json`
(rule planner) at commit a46c3f9, before the execution core was redesigned. Everything must match except
what measures time (timings, the transcript's real-time factor); numbers are compared to 6 significant
digits, so a different CPU's last-bit rounding does not count as a change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "multimodal_rule_result.json"
TIMING_KEYS = {"timings", "real_time_factor"}


def differences(expected: object, actual: object, where: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{where}.{k}: missing" for k in expected.keys() - actual.keys() if k not in TIMING_KEYS]
        found += [f"{where}.{k}: unexpected" for k in actual.keys() - expected.keys() if k not in TIMING_KEYS]
        for key in (expected.keys() & actual.keys()) - TIMING_KEYS:
            found += differences(expected[key], actual[key], f"{where}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        return [] if math.isclose(expected, actual, rel_tol=1e-6, abs_tol=1e-9) else [f"{where}: {actual} != {expected}"]
    return [] if expected == actual else [f"{where}: {actual!r} != {expected!r}"]


def test_the_multimodal_example_solves_as_it_did_before(run_cli, examples, tmp_path):
    config = tmp_path / "rule.toml"
    config.write_text('[agent]\nplanner = "rule"\n', encoding="utf-8")
    out = tmp_path / "out"
    done = run_cli("solve", str(examples / "multimodal_case.json"), "-o", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    actual = json.loads((out / "result.json").read_text(encoding="utf-8"))
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    found = differences(expected, actual)
    assert not found, "\n".join(found[:20])


def test_the_comparison_sees_a_changed_value():
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    changed = json.loads(GOLDEN.read_text(encoding="utf-8"))
    changed["differential"][0]["name"] += " (changed)"
    changed["evidence"][1]["payload"] = {**changed["evidence"][1]["payload"], "extra": 1}
    changed["timings"]["total_s"] = 1e9
    found = differences(expected, changed)
    assert any("differential[0].name" in d for d in found) and any("extra: unexpected" in d for d in found)
    assert not any("timings" in d for d in found)
