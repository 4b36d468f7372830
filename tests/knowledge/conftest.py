"""Shared fixtures: one knowledge graph built from the real HPO sources for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def knowledge_cache() -> Path:
    # The run-wide cache root (conftest at the repository root sets it): built once, reused by every test.
    return Path(os.environ["MEDAGENT_HOME"])


@pytest.fixture(scope="session")
def graph(knowledge_cache: Path):
    from medagent.specialists.knowledge.graph import load_graph

    return load_graph(knowledge_cache)


@pytest.fixture(scope="session")
def linker(graph, knowledge_cache: Path):
    from medagent.specialists.knowledge.load import load_linker

    return load_linker(knowledge_cache, dense=False)
