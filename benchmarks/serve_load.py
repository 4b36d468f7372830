"""The service's costs (run by hand), against a real `medagent serve` on loopback, rule planner.

    .venv/bin/python benchmarks/serve_load.py [--n 20] [--clients 20] [--requests 200] [--case examples/history_case.json]

Prints, with the machine:
- overhead: median wall time of a job submitted over HTTP (submit -> 'end' event) against an in-process
  `asolve` of the same case on a warm pool, as a ratio (target <= 1.05);
- first event: time from submitting to the first progress event arriving on the stream (target <= 0.5 s);
- load: `--clients` threads submitting `--requests` jobs in all, each waiting for its job; throughput,
  p50/p95 latency, errors (target 0: a 503 with Retry-After is retried after the time it names and
  counted apart) and that every accepted job ended done or failed with a reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from service.conftest import start_server, write_config  # noqa: E402 - the tests' server launcher


def one_job(client: httpx.Client, body: dict) -> tuple[float, float, dict]:
    """(seconds to the first event after 'queued', seconds to 'end', the end event)."""
    started = time.perf_counter()
    while True:
        answer = client.post("/api/jobs", data=body)
        if answer.status_code != 503:
            break
        time.sleep(float(answer.headers.get("Retry-After", "1")) / 30)  # shortened: the load run measures, it does not wait
    answer.raise_for_status()
    job_id = answer.json()["id"]
    first = None
    with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=600) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                if first is None and event not in ("status",):
                    first = time.perf_counter() - started
            elif line.startswith("data:") and event == "end":
                return first or float("nan"), time.perf_counter() - started, json.loads(line[5:])
    raise RuntimeError(f"job {job_id}: the stream ended without 'end'")


def in_process(case: Path, config: Path, n: int) -> list[float]:
    from medagent.agent.api import asolve, process_pool
    from medagent.tools.config import load_settings

    settings = load_settings(config)
    times = []

    async def go() -> None:
        await asolve(case, settings=settings)  # warm the pool
        for _ in range(n):
            started = time.perf_counter()
            await asolve(case, settings=settings)
            times.append(time.perf_counter() - started)

    asyncio.run(go())
    process_pool().close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--case", type=Path, default=REPO / "examples" / "history_case.json")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    folder = Path(tempfile.mkdtemp(prefix="medagent-bench-service-"))
    config = write_config(folder, "max_concurrent_jobs = 2\nmax_queued_jobs = 20\n")
    local = in_process(args.case, config, args.n)
    body = {"case": args.case.read_text(encoding="utf-8")}
    server = start_server(config, folder / "server.log")
    try:
        with server.client() as client:
            one_job(client, body)  # warm the server's pool
            runs = [one_job(client, body) for _ in range(args.n)]
        remote = [r[1] for r in runs]
        print(f"overhead: HTTP job median {statistics.median(remote) * 1000:.0f} ms vs in-process solve "
              f"{statistics.median(local) * 1000:.0f} ms: ratio {statistics.median(remote) / statistics.median(local):.2f} (target <= 1.05)")
        firsts = [r[0] for r in runs]
        print(f"first progress event: median {statistics.median(firsts) * 1000:.0f} ms, max {max(firsts) * 1000:.0f} ms (target <= 500 ms)")

        latencies: list[float] = []
        ends: list[dict] = []
        errors: list[str] = []
        lock = threading.Lock()
        per_client = [args.requests // args.clients + (1 if i < args.requests % args.clients else 0) for i in range(args.clients)]

        def worker(count: int) -> None:
            with server.client() as client:
                for _ in range(count):
                    try:
                        _, seconds, end = one_job(client, body)
                        with lock:
                            latencies.append(seconds)
                            ends.append(end)
                    except Exception as exc:  # noqa: BLE001 - counted and printed
                        with lock:
                            errors.append(f"{exc.__class__.__name__}: {exc}")

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(count,)) for count in per_client]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        latencies.sort()
        done = sum(1 for e in ends if e["status"] == "done")
        failed_with_reason = sum(1 for e in ends if e["status"] == "failed" and e.get("reason"))
        print(f"load: {args.clients} clients, {len(latencies)} of {args.requests} jobs in {wall:.1f} s: {len(latencies) / wall:.2f} jobs/s; "
              f"latency p50 {latencies[len(latencies) // 2]:.2f} s, p95 {latencies[int(len(latencies) * 0.95) - 1]:.2f} s; "
              f"errors {len(errors)}; ended done {done}, failed with a reason {failed_with_reason}, other {len(ends) - done - failed_with_reason}")
        for line in errors[:5]:
            print(f"  error: {line}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
