"""Fixtures for the spine tests: the example folder and a runner for the real `medagent` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def case_dir(tmp_path: Path) -> Path:
    """A scratch case folder holding copies of the example volumes."""
    folder = tmp_path / "case"
    shutil.copytree(EXAMPLES / "data", folder / "data")
    return folder


def medagent(*args: str, cwd: Path | None = None, env: dict | None = None, input: str = "") -> subprocess.CompletedProcess:
    """Run the installed console script exactly as a user would (stdin is `input`, never the terminal)."""
    exe = Path(sys.executable).parent / "medagent"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], input=input, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600)


@pytest.fixture
def run_cli():
    return medagent
