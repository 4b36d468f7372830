"""SAT peak memory and speed vs sliding-window size and sliding-window batch, Nano and Pro, fp32 and bf16, on CPU.

    python benchmarks/sat_memory.py [--quick] [--only nano|pro] [--max-gb 9] [--max-seconds 150] [--queries 8] [-o table.json]

Run by hand, never in CI. Each configuration runs in a fresh subprocess (`--child`), so its peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, plus a psutil RSS sampler at 5 ms during the forward) belongs to that
configuration alone. The child builds the full-size network (`nano_config()` / `pro_config()`, random weights, nothing
downloaded), casts it to the dtype, and runs ONE forward of `batch` windows (what MONAI's sliding window hands the
predictor when sw_batch_size = batch) against `--queries` random text queries, under `torch.no_grad()`. The text
encoder (BioLORD-2023-C, about 110 M parameters, run once per call, not per window) is not part of the measurement.

A configuration is skipped, with the reason printed, when the measured smaller window of the same model and dtype
projects (linear in voxels x batch) beyond `--max-gb` of RAM or `--max-seconds` of forward time: the machine this
runs on is shared, so the full 288x288x96 window is usually projected, not measured.

Projected GPU column (a projection, not a measurement): CUDA context (0.5 GB, assumed) + parameter bytes + the
measured forward increment (peak RSS during the forward minus RSS before it) scaled linearly by voxels x batch to
288x288x96 at the same batch. It assumes the GPU allocator holds what the CPU allocator held (no cuDNN workspace,
no fragmentation), so read it as a lower bound. The authors' figures beside it: SAT-Nano about 24 GB, SAT-Pro
about 34 GB of GPU memory (zhaoziheng/SAT README; fp16 autocast, their setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

FULL_WINDOW = (288, 288, 96)
AUTHORS_GB = {"nano": 24.0, "pro": 34.0}
CUDA_CONTEXT_GB = 0.5
# (variant, dtype, window, batch), smallest first within each (variant, dtype): the skip rule projects from the
# last measured one.
PLAN = [
    *[("nano", dt, w, b) for dt in ("fp32", "bf16")
      for w, b in (((96, 96, 32), 1), ((96, 96, 32), 2), ((192, 192, 64), 1), ((192, 192, 64), 2), ((288, 288, 96), 1))],
    *[("pro", dt, w, b) for dt in ("fp32", "bf16") for w, b in (((96, 96, 32), 1), ((96, 96, 32), 2),
                                                                 ((192, 192, 64), 1), ((288, 288, 96), 1))],
]  # fmt: skip
QUICK = [("nano", "fp32", (96, 96, 32), 1), ("nano", "bf16", (96, 96, 32), 1), ("pro", "fp32", (96, 96, 32), 1)]


def _rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _maxrss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def child(variant: str, dtype: str, window: tuple[int, int, int], batch: int, queries: int) -> dict:
    """One configuration in this (fresh) process: build, cast, one forward; memory and time."""
    import torch

    from medagent.specialists.sat.model import SATSegmenter, nano_config, pro_config

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    base = _rss_gb()
    config = nano_config() if variant == "nano" else pro_config()
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = SATSegmenter(config).eval().to(torch_dtype)
    params = sum(p.numel() for p in model.parameters())
    image = torch.randn(batch, 3, *window, dtype=torch_dtype)
    text = torch.randn(batch, queries, config.query_dim, dtype=torch_dtype)
    before = _rss_gb()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_gb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with torch.no_grad():
        logits = model(image, text)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    return {
        "variant": variant, "dtype": dtype, "window": list(window), "batch": batch, "queries": queries,
        "params": params, "param_gb": params * (4 if dtype == "fp32" else 2) / 2**30,
        "rss_start_gb": base, "rss_before_forward_gb": before, "peak_sampled_gb": max(peak[0], _rss_gb()),
        "maxrss_gb": _maxrss_gb(), "forward_s": seconds, "output_shape": list(logits.shape),
    }  # fmt: skip


def voxels(window: tuple[int, ...] | list[int], batch: int) -> int:
    return window[0] * window[1] * window[2] * batch


def increment_gb(row: dict) -> float:
    return max(row["peak_sampled_gb"], row["maxrss_gb"]) - row["rss_before_forward_gb"]


def projected_gpu_gb(row: dict) -> float:
    scale = voxels(FULL_WINDOW, row["batch"]) / voxels(row["window"], row["batch"])
    return CUDA_CONTEXT_GB + row["param_gb"] + increment_gb(row) * scale


def machine() -> str:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, torch "
            f"{torch.__version__} (threads {torch.get_num_threads()}), Python {platform.python_version()}")  # fmt: skip


def run_plan(plan: list, queries: int, max_gb: float, max_seconds: float, timeout: float) -> list[dict]:
    rows: list[dict] = []
    last: dict[tuple[str, str], dict] = {}
    for variant, dtype, window, batch in plan:
        key = (variant, dtype)
        if key in last:  # project this configuration from the last measured one of the same model and dtype
            ref = last[key]
            scale = voxels(window, batch) / voxels(ref["window"], ref["batch"])
            need_gb = ref["rss_before_forward_gb"] + increment_gb(ref) * scale
            need_s = ref["forward_s"] * scale
            if need_gb > max_gb or need_s > max_seconds:
                why = (f"projected {need_gb:.1f} GB RAM / {need_s:.0f} s forward from "
                       f"{'x'.join(map(str, ref['window']))} b{ref['batch']} (limits {max_gb:g} GB, {max_seconds:g} s)")  # fmt: skip
                rows.append({"variant": variant, "dtype": dtype, "window": list(window), "batch": batch,
                             "skipped": why})  # fmt: skip
                print(f"  skip {variant} {dtype} {'x'.join(map(str, window))} b{batch}: {why}", flush=True)
                continue
        command = [sys.executable, __file__, "--child", variant, dtype, *map(str, window), str(batch), str(queries)]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            rows.append({"variant": variant, "dtype": dtype, "window": list(window), "batch": batch,
                         "skipped": f"timed out after {timeout:g} s"})  # fmt: skip
            continue
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            rows.append({"variant": variant, "dtype": dtype, "window": list(window), "batch": batch,
                         "skipped": f"failed (rc {done.returncode}): {tail[0][:120]}"})  # fmt: skip
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["wall_s"] = time.perf_counter() - started
        rows.append(row)
        last[key] = row
        print("  row " + json.dumps(row), flush=True)
        print(f"  done {variant} {dtype} {'x'.join(map(str, window))} b{batch}: peak {row['maxrss_gb']:.2f} GB, "
              f"forward {row['forward_s']:.1f} s", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    head = ("| model | dtype | window | batch | params (M) | RSS before fwd (GB) | peak RSS (GB) | fwd increment (GB) "
            "| fwd time (s) | projected GPU @288x288x96 (GB) | authors' GPU (GB) |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        w = "x".join(map(str, r["window"]))
        if "skipped" in r:
            lines.append(f"| {r['variant']} | {r['dtype']} | {w} | {r['batch']} | skipped: {r['skipped']} "
                         "| | | | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['variant']} | {r['dtype']} | {w} | {r['batch']} | {r['params'] / 1e6:.1f} | "
            f"{r['rss_before_forward_gb']:.2f} | {max(r['maxrss_gb'], r['peak_sampled_gb']):.2f} | "
            f"{increment_gb(r):.2f} | {r['forward_s']:.1f} | {projected_gpu_gb(r):.1f} (projection, b{r['batch']}) | "
            f"{AUTHORS_GB[r['variant']]:g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        variant, dtype, h, w, d, batch, queries = argv[1:8]
        print(json.dumps(child(variant, dtype, (int(h), int(w), int(d)), int(batch), int(queries))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the smallest window of each model")
    parser.add_argument("--queries", type=int, default=8, help="text queries (targets) per window (default 8)")
    parser.add_argument("--max-gb", type=float, default=9.0, help="skip a configuration projected above this RAM")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="skip one projected above this forward time")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration subprocess")
    parser.add_argument("--only", choices=("nano", "pro"), help="one model only")
    parser.add_argument("-o", "--output", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    print(f"one forward per configuration, {args.queries} queries, random weights, fresh subprocess each", flush=True)
    plan = [c for c in (QUICK if args.quick else PLAN) if args.only in (None, c[0])]
    rows = run_plan(plan, args.queries, args.max_gb, args.max_seconds, args.timeout)
    print(table(rows))
    print(f"Projected GPU = {CUDA_CONTEXT_GB} GB CUDA context (assumed) + parameters + forward increment x "
          "(288*288*96 / measured voxels), same batch and dtype: a projection from CPU, not a GPU measurement. "
          "Authors' figures: SAT-Nano ~24 GB, SAT-Pro ~34 GB.")
    if args.output:
        args.output.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
