"""Fixtures for the LLM tests: the packaged 0.5B GGUF and one real llama.cpp server per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from medagent.agent.llm.assemble import PACKAGED, assemble, packaged_installed
from medagent.tools.config import cache_root

SMALL = "qwen2.5-coder-0.5b-instruct"
LARGE = "qwen2.5-coder-1.5b-instruct-q4_k_m"
REPO = Path(__file__).resolve().parents[2]


def packaged_gguf(name: str) -> Path:
    if not packaged_installed(name):
        pytest.skip(f"packaged GGUF {name} is not installed ({PACKAGED[name].pip})")
    return assemble(name, cache_root())


@pytest.fixture(scope="session")
def small_gguf() -> Path:
    return packaged_gguf(SMALL)


@pytest.fixture(scope="session")
def large_gguf() -> Path:
    return packaged_gguf(LARGE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(gguf: Path, alias: str, folder: Path):
    """`python -m llama_cpp.server` on 127.0.0.1; a generator yielding its URL, stopping it afterwards."""
    port = free_port()
    log = folder / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ})
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {process.returncode}: {log.read_text()[-800:]}")
            try:
                if httpx.get(f"{base_url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready after 180 s: {log.read_text()[-800:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def llama_server(small_gguf: Path, tmp_path_factory):
    """The 0.5B model behind a real llama.cpp server; stopped when the session ends."""
    yield from start_server(small_gguf, "small", tmp_path_factory.mktemp("llama-server"))


@pytest.fixture(scope="session")
def second_llama_server(small_gguf: Path, tmp_path_factory):
    """A second server of the same model under another alias (failover tests)."""
    yield from start_server(small_gguf, "small-b", tmp_path_factory.mktemp("llama-server-b"))
