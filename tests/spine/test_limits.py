"""The limits a user can rely on: the solve budget, interrupts that clean up, configurable intake limits, and
(Hypothesis) a case reader that answers any JSON with a Case or one CaseError, never anything else.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medagent.agent.api import run_loaded
from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, EvidenceDraft
from medagent.tools.errors import CaseError
from medagent.tools.intake import read_case_file, resolve_attachments
from medagent.tools.registry import AttachmentArgs, Tool
from medagent.tools.safeio import Limits, configure, current, load_json, terminal_safe
from medagent.tools.trace import TraceRecorder

CONFIG = "[knowledge]\nenabled = false\n\n[speech]\nenabled = false\n"


def sleeper(name: str, seconds: float) -> Tool:
    def run(args, ctx):
        time.sleep(seconds)
        return [EvidenceDraft(summary=f"{name} slept {seconds} s.", attachment=args.attachment)]

    return Tool(name=name, purpose="sleeps", args=AttachmentArgs, run=run, attachment_kinds=(AttachmentKind.volume,))


def test_the_solve_budget_cuts_off_what_is_still_running_and_the_report_says_so(examples, tmp_path):
    settings = Settings.model_validate({"agent": {"tool_timeout_s": 60, "solve_budget_s": 0.5},
                                        "knowledge": {"enabled": False}, "speech": {"enabled": False}})
    case = Case(id="b1", attachments=[{"id": "ct", "kind": "volume", "path": "data/ct_small.nii.gz", "modality": "CT"}])
    loaded = resolve_attachments(case, examples)
    started = time.monotonic()
    result, _ = asyncio.run(run_loaded(loaded, settings, tmp_path / "artifacts", TraceRecorder("b1"),
                                       [sleeper("slow.long", 3.0), sleeper("slow.short", 0.05)]))
    assert time.monotonic() - started < 2.5  # not the 3 s of the slow tool, nor its 60 s timeout
    by_tool = {e.tool: e for e in result.evidence}
    assert by_tool["slow.long"].error and "solve budget of 0.5 s" in by_tool["slow.long"].summary
    assert not by_tool["slow.short"].error
    assert any("solve budget of 0.5 s ([agent] solve_budget_s) ran out" in line for line in result.report.limitations)


def _world(tmp_path: Path, examples: Path) -> tuple[Path, Path, dict]:
    import shutil

    case = tmp_path / "case"
    shutil.copytree(examples / "data" / "ct_dicom", case / "ct")
    (case / "case.json").write_text(json.dumps({"id": "s1", "history": "Cough.", "attachments": [
        {"id": "ct", "kind": "volume", "path": "ct", "modality": "CT"}]}))
    config = tmp_path / "medagent.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "MEDAGENT_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    return case, config, env


def test_a_spent_budget_is_said_on_the_terminal_and_in_the_report(examples, tmp_path):
    case, config, env = _world(tmp_path, examples)
    config.write_text(CONFIG + "\n[agent]\nsolve_budget_s = 0.001\n")
    exe = Path(sys.executable).parent / "medagent"
    done = subprocess.run([str(exe), "solve", "--config", str(config), str(case / "case.json"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "solve budget of 0.001 s" in done.stderr  # the summary says what ran out
    assert "solve budget of 0.001 s" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_removes_the_staging_folder_and_says_so(examples, tmp_path, signum):
    case, config, env = _world(tmp_path, examples)
    out = tmp_path / "out"
    exe = Path(sys.executable).parent / "medagent"
    process = subprocess.Popen([str(exe), "solve", "--config", str(config), str(case / "case.json"), "-o", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not any(".partial-" in p.name for p in tmp_path.iterdir()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the solve ended before it could be interrupted"
    process.send_signal(signum)
    # A signal is handled between bytecodes: a slow import (torch) on a loaded machine may delay it.
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 128 + signum, (process.returncode, stderr)
    assert "Traceback" not in stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: interrupted by ") and "removed the unfinished output" in last, stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_intake_limits_are_settings(tmp_path):
    path = tmp_path / "case.json"
    path.write_text(json.dumps({"id": "l1", "history": "x" * 50}))
    assert read_case_file(path).history == "x" * 50
    before = current()
    try:
        configure(Settings.model_validate({"agent": {"max_text_chars": 10}}).agent)
        with pytest.raises(CaseError, match=r"history: 50 characters is over the limit of 10 \(\[agent\] max_text_chars\)"):
            read_case_file(path)
    finally:
        configure_back(before)
    with pytest.raises(CaseError, match="max_json_depth"):
        load_json("[" * 10 + "]" * 10, "x", Limits(json_depth=5))
    assert load_json('{"a": "[[[[[[[[[[["}', "x", Limits(json_depth=5)) == {"a": "[[[[[[[[[[["}  # brackets in strings


def configure_back(limits: Limits) -> None:
    import medagent.tools.safeio as safeio

    safeio._current = limits


def test_terminal_safe_keeps_text_and_defuses_control_characters():
    assert terminal_safe("fever 39.5 °C\n\tcough — 3 days") == "fever 39.5 °C\n\tcough — 3 days"
    assert terminal_safe("\x1b[2Jred\r\x08\u202e") == "\\x1b[2Jred\\x0d\\x08\\u202e"


hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev extra")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
fields = {"id": st.text(max_size=10) | st.just("h1"), "history": json_values, "patient": json_values | st.fixed_dictionaries(
    {"age_years": json_values, "sex": st.sampled_from(["female", "male", "x"]) | json_values}), "findings": json_values | st.lists(
    st.fixed_dictionaries({"name": st.text(max_size=8), "value": json_values}), max_size=3), "attachments": json_values,
    "phenotypes": json_values, "question": json_values, "schema_version": json_values}
cases = st.fixed_dictionaries({}, optional=fields) | json_values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(case={"id": "h1", "schema_version": {"\n": "\x00"}}, junk=b"", where=0)  # a key with a newline, once failed
@given(case=cases, junk=st.binary(max_size=8), where=st.integers(min_value=0, max_value=400))
def test_any_json_is_a_case_or_one_case_error(tmp_path, case, junk, where):
    text = json.dumps(case, allow_nan=True).encode()
    path = tmp_path / "case.json"
    for content in (text, text[:where] + junk + text[where:]):
        path.write_bytes(content)
        try:
            parsed = read_case_file(path)
        except CaseError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert isinstance(parsed, Case)
            assert isinstance(parsed.history, str)
