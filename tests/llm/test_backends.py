"""The HTTP backend against a real llama.cpp server: chat, streaming, constrained JSON, dialects, faults."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from medagent.agent.llm.assemble import verify
from medagent.agent.llm.base import LLMError, render_alpaca
from medagent.agent.llm.factory import doctor_lines, make_backend
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


VLLM_DIR = Path(sys.prefix) / "share" / "medagent" / "vllm"
TOOL_SCHEMA = {
    "type": "object",
    "properties": {"tool": {"enum": ["imaging.describe", "speech.transcribe"]}, "attachment": {"enum": ["ct1", "wav2"]}},
    "required": ["tool", "attachment"],
}


def vllm_parse(bodies: list[list], folder: Path = VLLM_DIR) -> dict:
    """What vLLM 0.33.0's own request models make of each [path, body] (see vllm_protocol.py), in a child process
    so that vLLM's packages never land on this session's path."""
    if not (folder / "vllm" / "entrypoints").is_dir():
        pytest.fail(f"vLLM's request models are not installed in {folder}: run `make setup-dev`", pytrace=False)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("vllm_protocol.py"))], input=json.dumps(bodies),
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": path})
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(f"vLLM's request models do not load from {folder} ({last}): run `make setup-dev`", pytrace=False)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vllm_dialect_bodies_constrain_vllms_engine_with_our_schema(llama_server):
    """The bodies the vllm dialect sends over HTTP, chat and Alpaca (`/v1/completions`), plain and streamed:
    a real OpenAI-compatible server (llama.cpp) answers them, and vLLM's own request models turn each into
    sampling parameters that carry our schema as the engine's JSON constraint, with no field left unread."""
    sent: list[list] = []

    async def record(request):
        sent.append([request.url.path, json.loads(request.content)])

    async def go():
        answers = []
        for template in ("chat", "alpaca"):
            backend = HTTPBackend(llama_server, "small", dialect="vllm", template=template, retries=0)
            backend._client.event_hooks["request"].append(record)
            try:
                answers.append((await backend.chat(QUESTION, schema=TOOL_SCHEMA, max_tokens=16)).text)
                answers.append("".join([p async for p in backend.stream(QUESTION, schema=TOOL_SCHEMA, max_tokens=16)]))
            finally:
                await backend.aclose()
        return answers

    answers = asyncio.run(go())
    # llama.cpp takes the standard OpenAI fields and ignores `structured_outputs` (so its answers are not constrained here).
    assert all(answer.strip() for answer in answers)
    assert [path for path, _ in sent] == ["/v1/chat/completions"] * 2 + ["/v1/completions"] * 2
    assert all("response_format" not in body and body["structured_outputs"] == {"json": TOOL_SCHEMA} for _, body in sent)

    # Controls, so that a pass means something: the removed `guided_json` (vLLM ignores it and leaves the output
    # free) and a misspelt constraint (refused).
    legacy = {k: v for k, v in sent[0][1].items() if k != "structured_outputs"} | {"guided_json": TOOL_SCHEMA}
    misspelt = sent[2][1] | {"structured_outputs": {"json_schema": TOOL_SCHEMA}}
    result = vllm_parse(sent + [["/v1/chat/completions", legacy], ["/v1/completions", misspelt]])
    assert result["vllm"] == "0.33.0"
    *ours, ignored, refused = result["parsed"]
    for (path, body), parsed in zip(sent, ours, strict=True):
        assert "error" not in parsed, parsed["error"]
        assert parsed["model"] == {"/v1/chat/completions": "ChatCompletionRequest", "/v1/completions": "CompletionRequest"}[path]
        assert parsed["ignored"] == []
        assert parsed["json"] == TOOL_SCHEMA
        assert (parsed["max_tokens"], parsed["temperature"], parsed["stream"]) == (16, 0.0, body["stream"])
    assert ours[2]["stop"] == ours[3]["stop"] == ["### Instruction:", "### Input:"]
    assert ignored["ignored"] == ["guided_json"] and ignored["json"] is None
    assert "one kind of structured outputs constraint" in refused["error"]


def test_the_vllm_check_fails_loudly_without_its_install(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"not installed in .*: run `make setup-dev`"):
        vllm_parse([], folder=tmp_path / "vllm")


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


def test_doctor_says_the_vllm_presets_are_not_yet_verified_against_a_running_vllm():
    lines = doctor_lines(Settings(llm=LLMSettings(preset="mmed-llama3-8b-vllm")))
    assert any("not yet verified against a running vLLM" in line and "vllm serve Henrychur/MMed-Llama-3-8B-EnIns" in line for line in lines)
    assert any("dialect vllm" in line for line in lines)
