"""Fixtures for the eval tests: offline settings without the knowledge graph (fast, deterministic)."""

from __future__ import annotations

import pytest

from medagent.tools.config import Settings


@pytest.fixture
def settings() -> Settings:
    # A real configuration a user can write ([knowledge] enabled = false): the tests exercise the
    # runner, scoring and reports, not the knowledge graph (tests/knowledge covers that).
    return Settings(knowledge={"enabled": False})
