"""Fixtures for the service tests: a real `medagent serve` process on a free loopback port, and an HTTP client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, extra: str = "") -> Path:
    """A medagent.toml for a test server: the rule planner (no LLM turn), jobs in the test's own folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "medagent.toml"
    config.write_text(f'[agent]\nplanner = "rule"\n\n[serve]\njobs_dir = "{folder / "jobs"}"\n{extra}', encoding="utf-8")
    return config


@dataclass
class Server:
    """A running `medagent serve` process."""

    url: str
    config: Path
    process: subprocess.Popen
    log: Path
    token: str | None = None
    args: list[str] = field(default_factory=list)

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(config: Path, log: Path, host: str = "127.0.0.1", port: int | None = None, env: dict | None = None,
                 token: str | None = None, wait: bool = True) -> Server:
    """Start `python -m medagent.cli serve` (the code under test, from this checkout's import path) and wait
    until /api/health answers."""
    port = port or free_port()
    args = [sys.executable, "-m", "medagent.cli", "serve", "--config", str(config), "--host", host, "--port", str(port)]
    full_env = {**os.environ, **(env or {})}
    handle = log.open("ab")
    process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=full_env)
    handle.close()
    server = Server(url=f"http://{'127.0.0.1' if host in ('0.0.0.0', '127.0.0.1') else host}:{port}", config=config,
                    process=process, log=log, token=token, args=args)
    if not wait:
        return server
    deadline = time.monotonic() + 120
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"medagent serve exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{server.url}/api/health", headers=headers, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"medagent serve did not answer within 120 s: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def service_server(tmp_path_factory) -> Server:
    """One server per test module (start-up imports the engine: a few seconds on 2 cores)."""
    folder = tmp_path_factory.mktemp("server")
    server = start_server(write_config(folder), folder / "server.log")
    yield server
    server.stop()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s")


def iter_events(response: httpx.Response):
    """(id, event, data) of each SSE event of a streamed response, as it arrives."""
    current = {"id": "", "event": "message", "data": []}
    for line in response.iter_lines():
        if line == "":
            if current["data"]:
                yield current["id"], current["event"], "\n".join(current["data"])
            current = {"id": "", "event": "message", "data": []}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                current["data"].append(value)
            elif key in ("id", "event"):
                current[key] = value


def sse_events(response: httpx.Response) -> list[tuple[str, str, str]]:
    """Every event of a streamed SSE response, read to its end."""
    return list(iter_events(response))
