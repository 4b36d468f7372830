"""One-time builds: bounded by their own setting, never a tool's timeout; a failed one leaves nothing
partial and the run goes on without the tools that need it, saying why."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .conftest import EXAMPLES, medagent

CASE = EXAMPLES / "history_case.json"


def _config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "medagent.toml"
    config.write_text("[speech]\nenabled = false\n" + extra)
    return config


def test_a_build_that_runs_out_of_time_blocks_its_tools_for_this_run_only(tmp_path):
    home = tmp_path / "home"  # empty: the knowledge graph is not built
    config = _config(tmp_path, "\n[cache]\nbuild_timeout_s = 2\n")
    done = medagent("solve", str(CASE), "-o", str(tmp_path / "out"), "--config", str(config),
                    env={"MEDAGENT_HOME": str(home)}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "building now, at most 2 s; `medagent setup` does this ahead of time" in done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    reason = ("knowledge graph (HPO, OMIM, ORPHA, ICD-10-CM) could not be built (the one-time build ran past "
              "[cache] build_timeout_s = 2 s); run `medagent setup`")  # fmt: skip
    assert f"knowledge.link was not run: {reason}" in result["report"]["limitations"]
    assert not [e for e in result["evidence"] if e["tool"].startswith("knowledge.")]  # not run, so no error evidence
    # The killed build left nothing a later run would load.
    assert not list(home.rglob("graph.pkl")) and not list(home.rglob("index.faiss"))


def test_an_unwritable_cache_root_is_one_line_from_setup_and_a_limitation_in_a_solve(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = _config(tmp_path)
    env = {"MEDAGENT_HOME": str(blocker / "home")}  # below a regular file: no chmod trick (CI runs as root)
    setup = medagent("setup", "--config", str(config), env=env, cwd=tmp_path)
    assert setup.returncode == 1 and "Traceback" not in setup.stderr + setup.stdout
    assert "✗ knowledge graph (HPO, OMIM, ORPHA, ICD-10-CM): " in setup.stdout and "cannot be written (Not a directory)" in setup.stdout
    done = medagent("solve", str(CASE), "-o", str(tmp_path / "out"), "--config", str(config), env=env, cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    limitations = json.loads((tmp_path / "out" / "result.json").read_text())["report"]["limitations"]
    assert any(line.startswith("knowledge.rank was not run: knowledge graph") and "Not a directory" in line
               for line in limitations)  # fmt: skip


def test_setup_builds_once_and_then_says_already_built(tmp_path):
    """With the run's cache root (built by `make test`'s set-up), set-up has nothing left to do."""
    config = _config(tmp_path)
    done = medagent("setup", "--config", str(config), env={"MEDAGENT_HOME": os.environ["MEDAGENT_HOME"]}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ knowledge graph (HPO, OMIM, ORPHA, ICD-10-CM): already built" in done.stdout
    assert "✓ dense phenotype index (MiniLM + faiss): already built" in done.stdout
    assert "– Whisper base speech model: not used by this configuration" in done.stdout
