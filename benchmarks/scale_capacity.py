"""Scale-out costs on a real Ray cluster (run by hand), and the capacity model built on them.

    .venv/bin/python benchmarks/scale_capacity.py [--address HOST:PORT] [--calls 100] [--items 12]
                                                  [--cases-per-day 10000] [--consultations 50] [--costs FILE]

Without --address it starts a local cluster on 127.0.0.1 (2 CPUs, as the tests do), deploys the knowledge and
speech tools with `medagent scale deploy`, and stops it at the end. Prints, with the machine:

- remote-call overhead: median wall time of one tool call through its Ray Serve deployment minus the same call
  in this process (knowledge.lookup, a sub-millisecond call; speech.transcribe, which ships a recording), in ms
  (target <= 20 ms on loopback);
- eval throughput with 1 and 2 Ray workers on the same suite (`--items` items of tests/data/scale/suite.jsonl,
  repeated), items/s and their ratio: the items are CPU-bound (MiniLM, Whisper, CT statistics), so on 2 cores
  the ideal is well under 2x;
- the capacity model: from per-call costs (measured here on CPU from warm local solves of the demo case, which
  has every modality, or `--costs`, a JSON {tool: seconds per call} measured on the GPUs you run), how many replicas of each deployment a load of
  `--cases-per-day` cases (at a peak of 3x the mean rate) and `--consultations` concurrent consultations needs,
  at 70 % utilisation. It says which figures are measured here and which are projected.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from scale.conftest import RAY, free_port, write_config  # noqa: E402 - the tests' cluster helpers

SUITE = REPO / "tests/data/scale/suite.jsonl"
PEAK = 3.0  # peak-hour rate over the day's mean
UTILISATION = 0.7  # the share of a replica's time the model plans to use


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def timed(call, n: int) -> list[float]:  # noqa: ANN001
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def overhead(config: Path, calls: int) -> dict[str, dict[str, float]]:
    """Median ms of each tool call here and through its deployment (warm both), and the difference."""
    from medagent.agent.scale import RemoteTool
    from medagent.tools.config import load_settings
    from medagent.tools.intake import intake
    from medagent.tools.pool import ModelPool
    from medagent.tools.registry import Registry, ToolContext

    settings = load_settings(config)
    pool = ModelPool()
    registry = Registry(settings, pool=pool)
    out = {}
    dictation = intake(REPO / "examples/dictation_case.json", settings)
    probes = {
        "knowledge.lookup": (intake(REPO / "examples/history_case.json", settings), {"concept": "HP:0001250"}, calls),
        "speech.transcribe": (dictation, {"attachment": "dictation"}, max(5, calls // 10)),
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name, (loaded, arguments, n) in probes.items():
            tool = registry.tools[name]
            args = tool.args.model_validate(arguments)
            ctx = ToolContext(case=loaded.case, case_dir=loaded.case_dir, artifacts_dir=Path(scratch) / "artifacts",
                              settings=settings, pool=pool)
            group = next(g for g, spec in settings.serve.deployments.items() if name in spec.tools)
            remote = RemoteTool(settings, group)
            tool.run(args, ctx), remote.call(name, args, ctx, 600)  # warm: models loaded on both sides
            here = statistics.median(timed(lambda: tool.run(args, ctx), n)) * 1000  # noqa: B023
            walls, computes = [], []
            for _ in range(n):
                started = time.perf_counter()
                computes.append(remote.answer(name, args, ctx, 600)[2])
                walls.append(time.perf_counter() - started)
            there, compute = statistics.median(walls) * 1000, statistics.median(computes) * 1000
            transport = statistics.median(w - c for w, c in zip(walls, computes, strict=True)) * 1000
            out[name] = {"local_ms": here, "remote_ms": there, "replica_ms": compute, "transport_ms": transport, "calls": n}
    pool.close()
    return out


def repeated_suite(folder: Path, items: int) -> Path:
    lines = SUITE.read_text(encoding="utf-8").splitlines()
    out = []
    for i in range(items):
        item = json.loads(lines[i % len(lines)])
        item["id"] = f"{item['id']}-{i}"
        if "case_path" in item:
            item["case_path"] = str((SUITE.parent / item["case_path"]).resolve())
        out.append(json.dumps(item))
    path = folder / "suite.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def eval_rate(config: Path, suite: Path, workers: int, folder: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medagent.cli", "eval", "run", str(suite), "-o", str(folder),
                           "--ray", "--workers", str(workers), "--config", str(config)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"eval --ray --workers {workers} failed: {done.stderr[-2000:]}")
    lines = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines() if line]
    return len(lines) / (time.perf_counter() - started)


def per_call_costs(config: Path, folder: Path, runs: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """(median seconds per call, calls per case) of each tool, from warm local solves of the demo case (a history,
    a CT series, a CT and an MR volume, a recorded interview: every modality the offline defaults read)."""
    from medagent.agent.api import solve
    from medagent.tools.config import load_settings
    from medagent.tools.pool import ModelPool

    settings = load_settings(config)
    settings.serve.remote_tools = []
    seconds: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    with ModelPool() as pool:
        for run in range(runs + 1):  # the first one loads the models: not counted
            solve(REPO / "examples/multimodal_case.json", settings=settings, out=folder / f"demo{run}", pool=pool)
            if run == 0:
                continue
            for line in (folder / f"demo{run}" / "trace.jsonl").read_text(encoding="utf-8").splitlines():
                event = json.loads(line)
                if event["event"] == "tool_result":
                    seconds.setdefault(event["tool"], []).append(event["seconds"])
                    calls[event["tool"]] = calls.get(event["tool"], 0) + 1
    return ({tool: statistics.median(s) for tool, s in seconds.items()},
            {tool: n / runs for tool, n in calls.items()})


def capacity(costs: dict[str, float], per_case: dict[str, float], cases_per_day: float, consultations: int,
             turn_s: float, deployments: dict[str, list[str]]) -> list[tuple[str, float, int]]:
    """(deployment, busy seconds per peak hour, replicas) for the load."""
    peak_per_hour = cases_per_day / 24 * PEAK
    rows = []
    for group, tools in deployments.items():
        busy = sum(peak_per_hour * per_case.get(t, 0) * costs.get(t, 0) for t in tools)
        rows.append((group, busy, max(1, math.ceil(busy / (3600 * UTILISATION)))))
    # Consultations: each open one sends a turn every ~60 s; a service replica runs 2 turns at once.
    service_busy = consultations * (3600 / 60) * turn_s / 2
    rows.append(("service", service_busy, max(1, math.ceil(service_busy / (3600 * UTILISATION)))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--cases-per-day", type=float, default=10_000)
    parser.add_argument("--consultations", type=int, default=50)
    parser.add_argument("--costs", type=Path, help="JSON {tool: seconds per call} measured where you run")
    options = parser.parse_args()
    print(f"machine: {machine()}")
    folder = Path(tempfile.mkdtemp(prefix="mdscale-"))  # $TMPDIR: keep it short, Ray puts sockets under it
    started_here = options.address is None
    address = options.address or f"127.0.0.1:{free_port()}"
    if started_here:
        subprocess.run([str(RAY), "start", "--head", f"--port={address.rsplit(':', 1)[1]}", "--num-cpus=2",
                        "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--temp-dir={folder / 'ray'}",
                        "--disable-usage-stats"], check=True, capture_output=True)
    try:
        config = write_config(folder, address, free_port(), None)
        text = config.read_text().replace("eval_num_cpus = 0.25", "eval_num_cpus = 0.5")
        config.write_text(text)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medagent.cli", "scale", "deploy", "--config", str(config)], check=True,
                       capture_output=True)
        print(f"deploy (knowledge, speech, vision; replicas importing medagent): {time.perf_counter() - t0:.1f} s")
        from medagent.agent.scale import connect

        connect(address)
        print("\nremote-call overhead (loopback, warm):")
        for name, row in overhead(config, options.calls).items():
            print(f"  {name:18s} local {row['local_ms']:8.1f} ms | remote {row['remote_ms']:8.1f} ms = on the replica "
                  f"{row['replica_ms']:8.1f} ms + call overhead {row['transport_ms']:5.1f} ms (target <= 20) | "
                  f"remote/local {row['remote_ms'] / max(row['local_ms'], 1e-3):.2f}, replica/local "
                  f"{row['replica_ms'] / max(row['local_ms'], 1e-3):.2f} ({row['calls']} calls)")
        suite = repeated_suite(folder, options.items)
        one = eval_rate(config, suite, 1, folder / "w1")
        two = eval_rate(config, suite, 2, folder / "w2")
        print(f"\neval throughput on the cluster ({options.items} items; CPU-bound): 1 worker {one:.2f} items/s, "
              f"2 workers {two:.2f} items/s, ratio {two / one:.2f} (2 cores: ideal < 2 for CPU-bound items)")
        costs, per_case = per_call_costs(config, folder / "costs")
        source = "measured here (CPU)"
        if options.costs:
            costs.update(json.loads(options.costs.read_text()))
            source = f"from {options.costs}"
        from medagent.tools.config import load_settings

        deployments = {g: s.tools for g, s in load_settings(config).serve.deployments.items()}
        turn_s = sum(costs.get(t, 0) * n for t, n in per_case.items())  # a consultation turn runs about a case's calls
        print(f"\ncapacity model (each case like examples/multimodal_case.json): {options.cases_per_day:,.0f} cases/day (peak {PEAK:g}x the mean rate), "
              f"{options.consultations} concurrent consultations, {UTILISATION:.0%} utilisation; per-call costs {source}")
        for tool in sorted(costs):
            print(f"  {tool:18s} {costs[tool] * 1000:9.1f} ms/call   {per_case.get(tool, 0):.2f} calls/case")
        for group, busy, replicas in capacity(costs, per_case, options.cases_per_day, options.consultations, turn_s, deployments):
            print(f"  {group:10s} busy {busy / 3600:7.2f} replica-hours per peak hour -> {replicas} replicas (projected)")
        print("  (projected: the load is a model, the costs are those above; LLM turns are vLLM's and not in it)")
    finally:
        import ray

        ray.shutdown()
        if started_here:
            subprocess.run([str(RAY), "stop", "--force"], capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
