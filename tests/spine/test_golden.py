"""Behaviour is kept: a rule-planner solve of the multimodal example reproduces the committed result.json.

tests/data/golden/multimodal_rule_result.json was written by `medagent solve examples/multimodal_case.json`
(rule planner) at commit a46c3f9, before the execution core was redesigned, and written again when measurements
began to count as counter-evidence (a low haemoglobin lowers polycythaemia vera: issue 25) and DICOM SEG output was
added, and when the speech defaults became beam 5 with voice-activity detection (issue 26: the interview is now
heard as "I am an abdominal pain...", with no "no" to flip it); nothing else changed then. Everything must match except
what measures time (timings, the transcript's real-time factor); numbers are compared to 6 significant
digits, so a different CPU's last-bit rounding does not count as a change.

What Whisper hears is the exception: CTranslate2's int8 kernels differ between CPUs, and on another machine
the same audio gave another greedy transcript ("I am an abdominal pain..." for "I can't have no middle
pain..."). The speech evidence, every call that reads it (transitively: the link of the transcript, the
ranking after it) and what the result builds from those (differential, findings, report, grounding) are
therefore compared in their shape only (ids, tools, call ids, keys); everything else exactly, and the
transcript must still hold the words that every machine heard.
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


HEARD = {"speech.transcribe"}  # tools whose output depends on the CPU's numerics beyond rounding
SHAPED = ("differential", "findings", "report", "grounding")


def machine_dependent(result: dict) -> set[str]:
    """Ids of the evidence that what Whisper heard flows into: its own, and that of every later call citing it
    or coming after such a call in the same chain (a ranking takes the phenotypes linked before it)."""
    by_call: dict[str, list[str]] = {}
    for item in result["evidence"]:
        by_call.setdefault(item["call_id"], []).append(item["id"])
    tainted: set[str] = set()
    for call in result["calls"]:
        cited = json.dumps(call["arguments"])
        if call["tool"] in HEARD or any(f'"{e}"' in cited for e in tainted) or (tainted and call["tool"] == "knowledge.rank"):
            tainted.update(by_call.get(call["call_id"], []))
    return tainted


def shape(value: object) -> object:
    """What a value is, not what it holds: an object's keys, or the type's name."""
    return sorted(k for k in value if k not in TIMING_KEYS) if isinstance(value, dict) else type(value).__name__


def comparable(result: dict, tainted: set[str]) -> dict:
    calls = {e["call_id"] for e in result["evidence"] if e["id"] in tainted}
    result = dict(result)
    result["evidence"] = [{k: (shape(v) if k in ("summary", "payload", "confidence") else v) for k, v in e.items()}
                          if e["id"] in tainted else e for e in result["evidence"]]
    result["calls"] = [{**c, "arguments": shape(c["arguments"])} if c["call_id"] in calls else c for c in result["calls"]]
    for key in SHAPED if tainted else ():
        result[key] = type(result.get(key)).__name__
    return result


def test_the_multimodal_example_solves_as_it_did_before(run_cli, examples, tmp_path):
    config = tmp_path / "rule.toml"
    config.write_text('[agent]\nplanner = "rule"\n', encoding="utf-8")
    out = tmp_path / "out"
    done = run_cli("solve", str(examples / "multimodal_case.json"), "-o", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    actual = json.loads((out / "result.json").read_text(encoding="utf-8"))
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    tainted = machine_dependent(expected)
    assert tainted == {"E8", "E10", "E11", "E12"}, tainted  # the transcript, its link, and the rankings
    assert machine_dependent(actual) == tainted
    found = differences(comparable(expected, tainted), comparable(actual, tainted))
    assert not found, "\n".join(found[:20])
    transcript = next(e for e in actual["evidence"] if e["id"] == "E8")["payload"]["transcript"].lower()
    assert "pain on the left side for three weeks" in transcript and "tired" in transcript, transcript


def test_the_comparison_sees_a_changed_value():
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    changed = json.loads(GOLDEN.read_text(encoding="utf-8"))
    changed["differential"][0]["name"] += " (changed)"
    changed["evidence"][1]["payload"] = {**changed["evidence"][1]["payload"], "extra": 1}
    changed["timings"]["total_s"] = 1e9
    found = differences(expected, changed)
    assert any("differential[0].name" in d for d in found) and any("extra: unexpected" in d for d in found)
    assert not any("timings" in d for d in found)
    # Through the machine-aware view, a change to evidence Whisper does not feed is still seen.
    changed["evidence"][0]["summary"] += " (changed)"
    tainted = machine_dependent(expected)
    assert any("evidence[0].summary" in d for d in differences(comparable(expected, tainted), comparable(changed, tainted)))
