"""Fixtures for the speech tests: the committed example recordings, settings with a private cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medagent.tools.config import Settings

AUDIO = Path(__file__).resolve().parents[2] / "examples" / "audio"


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    return AUDIO


@pytest.fixture(scope="session")
def spoken() -> dict[str, str]:
    """What each example file says (the espeak-ng input text)."""
    return json.loads((AUDIO / "transcripts.json").read_text())


@pytest.fixture(scope="session")
def speech_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root for the session, so the default model is assembled and loaded once."""
    return tmp_path_factory.mktemp("medagent-home")


@pytest.fixture
def settings(speech_home: Path) -> Settings:
    return Settings(cache_dir=speech_home)
