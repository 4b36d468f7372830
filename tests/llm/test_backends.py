"""The HTTP backend against a real llama.cpp server: chat, streaming, constrained JSON, dialects, faults."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import jsonschema
import pytest

from medagent.agent.llm.assemble import verify
from medagent.agent.llm.base import LLMError, render_alpaca
from medagent.agent.llm.factory import make_backend
from medagent.agent.llm.http import HTTPBackend
from medagent.tools.config import LLMSettings, Settings
from medagent.tools.errors import ConfigError

QUESTION = [{"role": "user", "content": "Which organ pumps blood? Answer in one word."}]


def test_assembled_gguf_matches_its_checksum(small_gguf):
    assert small_gguf.read_bytes()[:4] == b"GGUF"
    manifest = json.loads((small_gguf.parent / "manifest.json").read_text())
    assert manifest["size"] == small_gguf.stat().st_size == 491_400_064
    assert verify(small_gguf) == manifest["sha256"]


def test_chat_reports_text_and_token_counts(llama_server):
    async def go():
        backend = HTTPBackend(llama_server, "small", dialect="llamacpp")
        try:
            result = await backend.chat(QUESTION, max_tokens=8)
            pieces = [p async for p in backend.stream(QUESTION, max_tokens=8)]
            return result, pieces, await backend.models()
        finally:
            await backend.aclose()

    result, pieces, models = asyncio.run(go())
    assert result.text.strip()
    assert result.prompt_tokens > 5 and 0 < result.completion_tokens <= 8
    assert result.seconds > 0
    assert len(pieces) >= 1 and "".join(pieces).strip()
    assert "small" in models


def test_llamacpp_dialect_enforces_the_schema(llama_server):
    schema = {
        "type": "object",
        "properties": {"tool": {"enum": ["imaging.describe", "speech.transcribe"]}, "attachment": {"enum": ["ct1", "wav2"]}},
        "required": ["tool", "attachment"],
    }
    messages = [{"role": "user", "content": "The case has a chest CT (id ct1) and a voice recording (id wav2). Which tool should read the recording? Write a poem about it."}]

    async def go():
        backend = HTTPBackend(llama_server, "small", dialect="llamacpp")
        try:
            return await backend.chat(messages, schema=schema, max_tokens=40)
        finally:
            await backend.aclose()

    reply = asyncio.run(go()).json()
    jsonschema.validate(reply, schema)  # a grammar, not luck: the poem request cannot break the format


def test_openai_json_schema_dialect_is_refused_by_llamacpp_with_a_clear_error(llama_server):
    async def go():
        backend = HTTPBackend(llama_server, "small", dialect="vllm", retries=0)
        try:
            await backend.chat(QUESTION, schema={"type": "object"}, max_tokens=8)
        finally:
            await backend.aclose()

    with pytest.raises(LLMError, match="refused the request: HTTP"):
        asyncio.run(go())


def test_alpaca_template_goes_through_completions(llama_server):
    messages = [{"role": "system", "content": "Answer the question."}, {"role": "user", "content": "Which organ pumps blood?"}]
    prompt = render_alpaca(messages)
    assert prompt.index("### Instruction:") < prompt.index("### Input:") < prompt.rindex("### Response:")

    async def go():
        backend = HTTPBackend(llama_server, "small", template="alpaca")
        try:
            return await backend.chat(messages, max_tokens=8)
        finally:
            await backend.aclose()

    result = asyncio.run(go())
    assert result.text.strip() and result.completion_tokens > 0


def test_server_down_is_a_clear_error_after_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the socket closes
    backend = HTTPBackend(f"http://127.0.0.1:{port}", "x", retries=2, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(LLMError, match=r"cannot connect .*is the server running\?.*after 3 tries"):
        asyncio.run(backend.chat(QUESTION))
    assert time.monotonic() - started < 10


def test_a_silent_server_times_out_instead_of_hanging():
    # A real TCP server that accepts and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    backend = HTTPBackend(f"http://127.0.0.1:{listener.getsockname()[1]}", "x", timeout_s=0.5, retries=1, backoff_s=0.05)
    started = time.monotonic()
    try:
        with pytest.raises(LLMError, match=r"no answer within 0.5 s .*after 2 tries"):
            asyncio.run(backend.chat(QUESTION))
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()
    assert time.monotonic() - started < 5


def test_remote_server_needs_allow_remote(capsys):
    remote = Settings(llm=LLMSettings(preset="openai-compatible", base_url="http://10.20.30.40:8000", model="m"))
    with pytest.raises(ConfigError, match="allow_remote = true"):
        make_backend(remote)
    allowed = Settings(llm=LLMSettings(preset="openai-compatible", base_url="http://10.20.30.40:8000", model="m", allow_remote=True))
    backend = make_backend(allowed)
    assert "case content leaves this machine" in capsys.readouterr().err
    asyncio.run(backend.aclose())


def test_missing_model_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError, match=str(missing)):
        make_backend(Settings(llm=LLMSettings(preset="offline-cpu", model_path=missing)))
