"""Several servers of one model: requests alternate between them, and an unreachable one is skipped."""

from __future__ import annotations

import asyncio

from medagent.agent.llm.factory import make_backend
from medagent.agent.llm.http import RoundRobinBackend
from medagent.tools.config import Settings

HELLO = [{"role": "user", "content": "Say OK."}]


def settings_for(urls: list[str], retries: int = 2) -> Settings:
    return Settings.model_validate({"llm": {"preset": "openai-compatible", "dialect": "llamacpp", "model": "small",
                                            "base_urls": urls, "retries": retries, "timeout_s": 60}})


def test_requests_alternate_between_servers(llama_server, second_llama_server):
    async def run() -> list[str]:
        backend = make_backend(settings_for([llama_server, second_llama_server]))
        assert isinstance(backend, RoundRobinBackend)
        try:
            return [(await backend.chat(HELLO, max_tokens=3)).server for _ in range(4)]
        finally:
            await backend.aclose()

    served = asyncio.run(run())
    assert set(served) == {llama_server, second_llama_server}, served
    assert served[0] != served[1] and served[0] == served[2], served


def test_an_unreachable_server_is_skipped(llama_server):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"

    async def run() -> list[str]:
        backend = make_backend(settings_for([dead, llama_server], retries=0))
        try:
            return [(await backend.chat(HELLO, max_tokens=3)).server for _ in range(3)]
        finally:
            await backend.aclose()

    assert asyncio.run(run()) == [llama_server] * 3
