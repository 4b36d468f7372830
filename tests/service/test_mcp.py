"""`medagent mcp`: the real server process, spoken to with the MCP SDK's own client, over stdio and streamable HTTP.

What a user of an MCP client notices: the tools are listed with their schemas, a tool call returns the evidence
the engine produced, solve_case returns result.json, a bad call is one error line and the server keeps serving,
and the HTTP transport is not exposed beyond loopback without a token, which it then requires.
One stdio server serves all the stdio checks (its models load once, as they do for a user).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[2]
HISTORY_CASE = REPO / "examples" / "history_case.json"
CT_CASE = REPO / "examples" / "ct_nifti_case.json"  # one CT volume, attachment id "ct", beside the case in data/
CALL_TIMEOUT = 120.0


def server_env(**extra: str) -> dict[str, str]:
    """The server's environment: this interpreter's import path and cache root (the built graph), no stray token."""
    env = {k: v for k, v in os.environ.items() if k != "MEDAGENT_API_TOKEN"}
    env.update(extra)
    return env


def server_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "medagent.cli", "mcp", "--config", str(config), *args]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rule planner: solve_case needs no LLM (examples/medagent-offline.toml only adds the LLM preset)."""
    path = tmp_path_factory.mktemp("mcp") / "medagent.toml"
    path.write_text('[agent]\nplanner = "rule"\n', encoding="utf-8")
    return path


class StdioServer:
    """One real `medagent mcp` over stdio with a connected SDK ClientSession, on a loop in a thread of its own,
    so every test of the module talks to the same server process."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: ClientSession | None = None
        self.init: Any = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        params = StdioServerParameters(command=sys.executable, args=server_command(self.config)[1:], env=server_env(),
                                       cwd=str(REPO))
        try:
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                self.init = await session.initialize()
                self.session = session
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the test that waits for the server
            self._failure = exc
            self._ready.set()

    def start(self) -> StdioServer:
        self._thread.start()
        assert self._ready.wait(60), "the stdio server did not answer initialize within 60 s"
        if self._failure is not None:
            raise self._failure
        return self

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def close(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def stdio(config: Path) -> Iterator[StdioServer]:
    server = StdioServer(config).start()
    yield server
    server.close()


def reply(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


def test_stdio_lists_the_tools_with_their_schemas_and_says_research_use(stdio: StdioServer) -> None:
    assert "research use only" in stdio.init.instructions.lower()
    assert "not a medical device" in stdio.init.instructions.lower()
    tools = {t.name: t for t in stdio.run(stdio.session.list_tools()).tools}
    for name in ("knowledge.link", "knowledge.rank", "knowledge.lookup", "solve_case"):
        assert name in tools
        assert tools[name].input_schema["type"] == "object" and tools[name].input_schema["properties"]
        assert "case_path" in tools[name].input_schema["properties"]
    assert "text" in tools["knowledge.link"].input_schema["required"]
    assert tools["solve_case"].input_schema["required"] == ["case_path"]
    # tools that examine attachments cannot be called without the case that holds them
    assert "case_path" in tools["imaging.describe"].input_schema["required"]
    unavailable = {"imaging.segment", "imaging.vqa", "pathology.classify", "imaging.diagnose"}  # no model configured in this config
    assert not unavailable & set(tools)


def test_stdio_knowledge_link_returns_the_phenotypes_the_history_names(stdio: StdioServer) -> None:
    history = json.loads(HISTORY_CASE.read_text())["history"]
    out = reply(stdio.run(stdio.session.call_tool("knowledge.link", {"text": history, "case_path": str(HISTORY_CASE)})))
    assert out["case_id"] == "example-history" and out["tool"] == "knowledge.link"
    [evidence] = out["evidence"]
    assert evidence["id"] == "E1" and not evidence["error"]
    present = {term["id"]: term["label"] for term in evidence["payload"]["present"]}
    assert present.get("HP:0012450") == "Chronic constipation"  # "Chronic constipation since birth"
    assert present.get("HP:0003270") == "Abdominal distention"  # "Distended abdomen"
    assert "Fever" in {term["label"] for term in evidence["payload"]["excluded"]}  # "No fever"
    assert "research use only" in out["notice"].lower()


def test_stdio_solve_case_returns_the_result_with_a_differential_and_evidence_ids(stdio: StdioServer) -> None:
    result = reply(stdio.run(stdio.session.call_tool("solve_case", {"case_path": str(HISTORY_CASE)})))
    assert result["case_id"] == "example-history"
    assert result["differential"] and result["differential"][0]["name"] == "Hirschsprung disease"
    ids = [e["id"] for e in result["evidence"]]
    assert ids == [f"E{i}" for i in range(1, len(ids) + 1)] and len(ids) >= 2
    assert all(set(c["evidence"]) <= set(ids) for c in result["differential"])
    out = Path(result["output_dir"])
    assert json.loads((out / "result.json").read_text())["differential"] == result["differential"]
    assert (out / "report.md").is_file()


def test_stdio_an_attachment_tool_examines_the_attachment_beside_the_case(stdio: StdioServer) -> None:
    out = reply(stdio.run(stdio.session.call_tool("imaging.describe", {"attachment": "ct", "case_path": str(CT_CASE)})))
    [evidence] = out["evidence"]
    assert evidence["attachment"] == "ct" and not evidence["error"]
    assert evidence["payload"]["modality"] == "CT" and evidence["payload"]["format"] == "nifti"
    assert "CT volume" in evidence["summary"]
    assert (Path(out["output_dir"]) / "trace.jsonl").is_file()  # the call is on record, as a solve's would be


def test_stdio_bad_calls_are_one_error_line_and_the_server_keeps_serving(stdio: StdioServer, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "case.json"
    result = stdio.run(stdio.session.call_tool("knowledge.link", {"text": "fever", "case_path": str(missing)}))
    assert result.is_error
    [line] = result.content[0].text.splitlines()
    assert str(missing) in line and "not found" in line

    invalid = tmp_path / "case.json"
    invalid.write_text(json.dumps({"id": "bad", "patient": {"age_years": -4}}))
    result = stdio.run(stdio.session.call_tool("solve_case", {"case_path": str(invalid)}))
    assert result.is_error and len(result.content[0].text.splitlines()) == 1
    assert "age_years" in result.content[0].text

    result = stdio.run(stdio.session.call_tool("imaging.describe", {"attachment": "ct9", "case_path": str(HISTORY_CASE)}))
    assert result.is_error and "no attachment 'ct9'" in result.content[0].text

    result = stdio.run(stdio.session.call_tool("knowledge.link", {"case_path": str(HISTORY_CASE)}))
    assert result.is_error and "text" in result.content[0].text  # the tool's own required argument

    out = reply(stdio.run(stdio.session.call_tool("knowledge.lookup", {"concept": "HP:0012450"})))
    assert out["evidence"][0]["payload"]["label"] == "Chronic constipation"


# ---------------------------------------------------------------------------------------------- streamable HTTP


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HttpServer:
    """A real `medagent mcp --transport http` process, waited for until it accepts connections."""

    def __init__(self, config: Path, host: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads could fill and stall it
        self.process = subprocess.Popen(server_command(config, "--transport", "http", "--host", host, "--port", str(self.port)),
                                        env=env, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise AssertionError(f"the server exited: {self.log.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the HTTP server did not listen within 60 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


async def http_session(url: str, headers: dict[str, str] | None, work: Any) -> Any:
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=CALL_TIMEOUT)) as client:
        async with streamable_http_client(url, http_client=client) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)


def test_http_on_loopback_lists_and_calls(config: Path) -> None:
    server = HttpServer(config, "127.0.0.1", server_env())
    try:
        async def work(session: ClientSession) -> tuple[set[str], Any]:
            names = {t.name for t in (await session.list_tools()).tools}
            return names, await session.call_tool("knowledge.lookup", {"concept": "HP:0003270"})

        names, result = asyncio.run(http_session(server.url, None, work))
    finally:
        server.stop()
    assert {"knowledge.link", "solve_case"} <= names
    assert reply(result)["evidence"][0]["payload"]["label"] == "Abdominal distention"


def test_http_refuses_a_non_loopback_host_without_a_token(config: Path) -> None:
    done = subprocess.run(server_command(config, "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port())),
                          env=server_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "0.0.0.0" in line and "token" in line and "MEDAGENT_API_TOKEN" in line


def test_http_with_a_token_requires_the_bearer_header(config: Path) -> None:
    token = secrets.token_urlsafe(16)
    server = HttpServer(config, "0.0.0.0", server_env(MEDAGENT_API_TOKEN=token))
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "test", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    try:
        for headers in (accept, {**accept, "Authorization": "Bearer wrong"}):
            refused = httpx2.post(server.url, json=initialize, headers=headers, timeout=30)
            assert refused.status_code == 401, refused.text
            assert "bearer" in refused.text.lower()

        async def work(session: ClientSession) -> set[str]:
            return {t.name for t in (await session.list_tools()).tools}

        names = asyncio.run(http_session(server.url, {"Authorization": f"Bearer {token}"}, work))
    finally:
        server.stop()
    assert {"knowledge.link", "solve_case"} <= names
