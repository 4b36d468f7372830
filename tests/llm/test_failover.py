"""Several servers of one model as a failover list: the first reachable one answers, an unreachable one
is passed over, and when none can be reached the error names each of them."""

from __future__ import annotations

import asyncio
import socket

import pytest

from medagent.agent.llm.base import LLMError
from medagent.agent.llm.factory import make_backend
from medagent.tools.config import Settings

HELLO = [{"role": "user", "content": "Say OK."}]


def settings_for(urls: list[str], retries: int = 2) -> Settings:
    return Settings.model_validate({"llm": {"preset": "openai-compatible", "dialect": "llamacpp", "model": "small",
                                            "base_urls": urls, "retries": retries, "timeout_s": 60}})


def dead_urls(count: int) -> list[str]:
    """Distinct ports nothing listens on (bound together, so none is handed out twice, then released)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [f"http://127.0.0.1:{probe.getsockname()[1]}" for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def served_and_streamed(urls: list[str], chats: int, retries: int = 2) -> tuple[list[str], str]:
    """The server that answered each of `chats` chats, and the text one stream gave, through a failover list."""
    async def run() -> tuple[list[str], str]:
        backend = make_backend(settings_for(urls, retries=retries))
        try:
            served = [(await backend.chat(HELLO, max_tokens=3)).server for _ in range(chats)]
            return served, "".join([p async for p in backend.stream(HELLO, max_tokens=3)])
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_every_request_goes_to_the_first_server(llama_server, second_llama_server):
    served, streamed = served_and_streamed([llama_server, second_llama_server], chats=4)
    assert served == [llama_server] * 4
    assert streamed.strip()


def test_an_unreachable_first_server_fails_over_to_the_next(llama_server):
    served, streamed = served_and_streamed([*dead_urls(1), llama_server], chats=3, retries=0)
    assert served == [llama_server] * 3
    assert streamed.strip()


def test_with_no_server_reachable_the_error_names_each_url():
    urls = dead_urls(2)

    async def run(stream: bool) -> None:
        backend = make_backend(settings_for(urls, retries=0))
        try:
            if stream:
                [p async for p in backend.stream(HELLO, max_tokens=3)]
            else:
                await backend.chat(HELLO, max_tokens=3)
        finally:
            await backend.aclose()

    for stream in (False, True):
        with pytest.raises(LLMError) as failure:
            asyncio.run(run(stream))
        assert all(url in str(failure.value) for url in urls), str(failure.value)
        assert "cannot connect" in str(failure.value)
