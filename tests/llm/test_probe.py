"""A native-code crash never takes a run down: the in-process llama.cpp backend is probed in a child.

The crash is real: `MEDAGENT_TEST_PROBE_ABORT=1` makes the probe child call os.abort() (SIGABRT), as a
llama.cpp build that does not suit the CPU dies with SIGSEGV or SIGILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from medagent.agent.llm.probe import ABORT_ENV, run_probe

CASE = {"id": "probe-case", "patient": {"age_years": 30, "sex": "female"},
        "history": "Thirty-year-old woman with a dry cough for two weeks.", "question": "Most likely diagnosis?"}  # fmt: skip


def _setup(tmp_path: Path, gguf: Path, planner: str) -> tuple[Path, Path]:
    (tmp_path / "case.json").write_text(json.dumps(CASE))
    config = tmp_path / "medagent.toml"
    config.write_text(
        f'[agent]\nplanner = "{planner}"\n\n[llm]\npreset = "offline-cpu"\nmodel_path = "{gguf}"\nn_ctx = 2048\n\n'
        "[knowledge]\nenabled = false\n\n[speech]\nenabled = false\n"
    )
    return tmp_path / "case.json", config


def _solve(tmp_path: Path, case: Path, config: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, ABORT_ENV: "1", "MEDAGENT_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "medagent.cli", "solve", str(case), "-o", str(out), "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip


def test_a_crashing_backend_leaves_the_run_to_the_rules_and_says_so(tmp_path, small_gguf):
    case, config = _setup(tmp_path, small_gguf, "auto")
    done = _solve(tmp_path, case, config, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    note = "offline LLM unavailable (probe died: SIGABRT); planned with rules"
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["report"]["limitations"][0] == note
    assert result["models"]["planner"] == "rule" and result["models"]["reporter"] != "llm"
    assert f"- {note}" in (tmp_path / "out" / "report.md").read_text()
    # The verdict is cached per build, CPU flags and GGUF: the next run does not probe (or crash) again.
    [verdict] = (tmp_path / "home" / "llm" / "probe").glob("*.json")
    assert json.loads(verdict.read_text())["reason"] == "probe died: SIGABRT"


def test_with_the_llm_forced_a_crashing_backend_is_one_line_and_exit_1(tmp_path, small_gguf):
    case, config = _setup(tmp_path, small_gguf, "llm")
    done = _solve(tmp_path, case, config, tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: offline LLM unavailable (probe died: SIGABRT)"]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_the_probe_passes_where_llama_cpp_runs(small_gguf):
    verdict = run_probe(small_gguf, 2048, None)
    assert verdict["ok"], verdict["reason"]


def _solve_with(tmp_path: Path, gguf: Path) -> dict:
    case, config = _setup(tmp_path, gguf, "auto")
    env = {**os.environ, "MEDAGENT_HOME": str(tmp_path / "home")}  # a real probe: no abort
    done = subprocess.run([sys.executable, "-m", "medagent.cli", "solve", str(case), "-o", str(tmp_path / "out"),
                           "--config", str(config)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return json.loads((tmp_path / "out" / "result.json").read_text())


def test_a_truncated_gguf_is_a_stated_fallback(tmp_path, small_gguf):
    truncated = tmp_path / "truncated.gguf"
    with small_gguf.open("rb") as source:
        truncated.write_bytes(source.read(4 << 20))
    [note] = [line for line in _solve_with(tmp_path, truncated)["report"]["limitations"] if "offline LLM" in line]
    assert note.startswith("offline LLM unavailable (probe exited with code 1 (") and note.endswith("); planned with rules")
    assert "Failed to load model" in note


def test_an_assembled_gguf_whose_bytes_changed_fails_its_checksum(tmp_path, small_gguf):
    import shutil

    folder = tmp_path / "assembled"
    folder.mkdir()
    shutil.copy(small_gguf.parent / "manifest.json", folder / "manifest.json")
    shutil.copy(small_gguf, folder / "model.gguf")
    with (folder / "model.gguf").open("r+b") as handle:  # same size, one byte changed deep inside
        handle.seek(300 << 20)
        byte = handle.read(1)
        handle.seek(300 << 20)
        handle.write(bytes([byte[0] ^ 0xFF]))
    [note] = [line for line in _solve_with(tmp_path, folder / "model.gguf")["report"]["limitations"] if "offline LLM" in line]
    assert "checksum mismatch" in note and note.startswith("offline LLM unavailable (probe exited with code 4")


def test_a_missing_gguf_is_a_stated_fallback(tmp_path):
    [note] = [line for line in _solve_with(tmp_path, tmp_path / "nope.gguf")["report"]["limitations"] if "GGUF" in line]
    assert note == f"llm.model_path {tmp_path / 'nope.gguf'}: no such GGUF file; planned with rules"
