"""First-run penalty (run by hand): `medagent setup` on an empty cache root, then the first (cold) and
the second (warm) solve of the same case, each a whole `medagent` process. Target: cold <= 1.5 x warm.

    .venv/bin/python benchmarks/first_run.py [--case examples/multimodal_case.json] [--config examples/medagent-offline.toml]

Without --config the rule planner runs (no LLM); with the offline config the LLM plans and reports.
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


def timed(command: list[str], env: dict) -> float:
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default=str(REPO / "examples" / "multimodal_case.json"))
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    medagent = str(Path(sys.executable).parent / "medagent")
    config = ["--config", args.config] if args.config else []
    with tempfile.TemporaryDirectory(prefix="medagent-first-run-") as home:
        env = {**os.environ, "MEDAGENT_HOME": home}
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        setup = timed([medagent, "setup", *config], env)
        out = Path(home) / "out"
        cold = timed([medagent, "solve", args.case, "-o", str(out / "cold"), *config], env)
        warm = timed([medagent, "solve", args.case, "-o", str(out / "warm"), *config], env)
    print(f"setup {setup:.0f} s (empty cache root); first solve (cold) {cold:.1f} s; second (warm) {warm:.1f} s")
    print(f"cold / warm = {cold / warm:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
