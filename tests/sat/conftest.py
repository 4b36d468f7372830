"""Fixtures for the SAT tests: one tiny random SAT folder in the published layout, built by the package itself."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from medagent.specialists.sat.load import build_tiny

DATA = Path(__file__).resolve().parents[1] / "data" / "sat"


def manifest(name: str) -> dict:
    """tests/data/sat/sat_<name>_state_dict.json.gz (the shared manifest, gzipped)."""
    with gzip.open(DATA / f"sat_{name}_state_dict.json.gz", "rt", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("sat_tiny"), seed=0)
