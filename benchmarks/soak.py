"""Soak (run by hand): many solves in a row, in one process and in separate processes; memory and open
files over time should stay flat.

    .venv/bin/python benchmarks/soak.py inproc [--n 100] [--case examples/history_case.json] [--config F]
    .venv/bin/python benchmarks/soak.py procs  [--n 100] ...

`inproc` solves through the Python API in one process and samples its resident memory (VmRSS), open
file descriptors and threads after every solve. `procs` starts `medagent solve` N times and records each
process's peak RSS (wait4) and whether it left temporary folders behind. Each prints the first and last
tenth's means and the growth per solve.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(name: str, values: list[float], unit: str) -> str:
    tenth = max(1, len(values) // 10)
    first, last = sum(values[:tenth]) / tenth, sum(values[-tenth:]) / tenth
    per = (last - first) / max(1, len(values) - tenth)
    return f"{name}: first tenth {first:.1f} {unit}, last tenth {last:.1f} {unit}, growth {per:+.3f} {unit}/solve"


def temp_leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("medagent-*")}


def inproc(n: int, case: Path, config: Path | None) -> None:
    from medagent.agent.api import solve
    from medagent.tools.config import load_settings

    settings = load_settings(config)
    rss, fds, threads, seconds = [], [], [], []
    before = temp_leftovers()
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        for i in range(n):
            started = time.monotonic()
            solve(case, settings=settings, artifacts_dir=Path(scratch) / f"a{i}")
            seconds.append(time.monotonic() - started)
            rss.append(rss_mb())
            fds.append(len(os.listdir("/proc/self/fd")))
            threads.append(len(os.listdir("/proc/self/task")))
            if (i + 1) % 10 == 0:
                print(f"  {i + 1:>4} solves: RSS {rss[-1]:.0f} MB, {fds[-1]} open files, {threads[-1]} threads, "
                      f"{seconds[-1]:.2f} s/solve", flush=True)
    print(summary("RSS", rss, "MB"))
    print(summary("open files", [float(f) for f in fds], "fds"))
    print(summary("threads", [float(t) for t in threads], "threads"))
    print(summary("time", seconds, "s"))
    print(f"temporary folders left behind: {len(temp_leftovers() - before)}")


def procs(n: int, case: Path, config: Path | None) -> None:
    medagent = str(Path(sys.executable).parent / "medagent")
    peaks, seconds = [], []
    before = temp_leftovers()
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        for i in range(n):
            command = [medagent, "solve", str(case), "-o", f"{scratch}/out{i}", *(["--config", str(config)] if config else [])]
            started = time.monotonic()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
            _, status, usage = os.wait4(child.pid, 0)
            seconds.append(time.monotonic() - started)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"solve {i + 1} failed with {os.waitstatus_to_exitcode(status)}")
            peaks.append(usage.ru_maxrss / 1024)
            if (i + 1) % 10 == 0:
                print(f"  {i + 1:>4} processes: peak RSS {peaks[-1]:.0f} MB, {seconds[-1]:.1f} s", flush=True)
    print(summary("peak RSS per process", peaks, "MB"))
    print(summary("time", seconds, "s"))
    print(f"temporary folders left behind: {len(temp_leftovers() - before)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["inproc", "procs"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--case", type=Path, default=REPO / "examples" / "history_case.json")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.n} solves of {args.case.name} ({args.mode})")
    (inproc if args.mode == "inproc" else procs)(args.n, args.case.resolve(), args.config)


if __name__ == "__main__":
    main()
