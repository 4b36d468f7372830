"""Chat tests start `medagent chat` processes with a time limit each. The first knowledge.link in a fresh
cache builds the HPO graph and its dense index (minutes on 2 cores), so that is done here, once, in-process,
into the same cache root the processes use, before any of them starts."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="session", autouse=True)
def knowledge_cache_built() -> None:
    from medagent.tools.config import Settings
    from medagent.tools.knowledge import linker_for
    from medagent.tools.pool import ModelPool

    started = time.monotonic()
    with ModelPool() as pool:
        linker = linker_for(Settings(), pool)
        assert linker.dense is not None  # the default settings link with dense retrieval: its index now exists
    print(f"knowledge cache ready in {time.monotonic() - started:.0f} s")
