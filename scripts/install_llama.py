"""Build and install llama-cpp-python for the CPU it runs on, AMX included, where GCC cannot break it.

Why not pip's default build: llama-cpp-python compiles llama.cpp with `-march=native`, and such a
wheel, once in pip's cache, dies with SIGILL on another CPU that reuses it. And on CPUs with AMX
(Sapphire Rapids and later Xeons) a GCC 12 build (Debian 12's compiler) crashes with SIGSEGV on the
first decode: ggml's AMX kernels build a 64-byte tile configuration and load it with
`_tile_loadconfig`, whose GCC <= 12 definition is an asm whose memory operand is
`*(const void **)config`, 8 bytes. GCC therefore treats the stores to bytes 16-63 (rows and column
widths) as dead and deletes them; `ldtilecfg` then reads an invalid configuration and faults (#GP,
delivered as SIGSEGV). Seen in `objdump`: only the palette byte and a 32-byte zeroing survive before
`ldtilecfg`. (Upstream: ggml-org/llama.cpp#20824, closed without a cause.) Building with GCC's dead
store elimination off (`-fno-tree-dse -fno-dse`) keeps those stores and AMX runs correctly.

So the build names its instruction sets explicitly (GGML_NATIVE=OFF): every set the CPU has, from
AVX2 to AVX-512 VNNI/BF16 and AMX, plus the GCC flags above when AMX is on. Why not ggml's run-time
variant selection (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS): it compiles the CPU backend 13 times
on x86, which on 2 cores costs longer than the rest of set-up.

The wheel is kept under `$MEDAGENT_HOME/wheels/<variant key>/`, so a second checkout on the same CPU
installs it in seconds and a different CPU never gets it. `MEDAGENT_LLAMA_CPU` picks the variant:
`native` (default: the CPU's own), `noamx` (the same without AMX), `avx2` (the baseline any
x86-64-v3 CPU runs). What was built is recorded in `<venv>/share/medagent/llama-build.json`, which
`medagent doctor` prints; the run-time probe (agent/llm/probe.py) still guards every run.

Usage: python scripts/install_llama.py --python .venv/bin/python [--constraints constraints.txt]
Standard library only: it runs before medagent is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

VERSION = "0.3.36"
# ggml CMake option -> the /proc/cpuinfo flags it needs (all of them).
GGML_FEATURES: list[tuple[str, tuple[str, ...]]] = [
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
]
AMX = [("GGML_AMX_TILE", ("amx_tile",)), ("GGML_AMX_INT8", ("amx_int8",)), ("GGML_AMX_BF16", ("amx_bf16",))]
# GCC's dead-store elimination deletes the AMX tile configuration (see the module docstring).
AMX_GCC_FLAGS = "-fno-tree-dse -fno-dse"
AVX2_BASELINE = ("GGML_SSE42", "GGML_AVX", "GGML_F16C", "GGML_FMA", "GGML_AVX2", "GGML_BMI2")
# Options that cut build time without losing anything medagent uses (mtmd is the vision-chat library).
LEAN = ["-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF"]


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def variant(requested: str, flags: set[str]) -> tuple[str, list[str]]:
    """(variant name, the GGML options turned on) for this CPU."""
    if requested == "avx2":
        return "avx2", list(AVX2_BASELINE)
    if requested not in ("native", "noamx"):
        raise SystemExit(f"install_llama: MEDAGENT_LLAMA_CPU must be 'native', 'noamx' or 'avx2', not {requested!r}")
    on = [option for option, needs in GGML_FEATURES if all(f in flags for f in needs)]
    # ggml compiles its AMX kernels only beside AVX-512 VNNI.
    if requested == "native" and "GGML_AVX512_VNNI" in on and {"amx_tile", "amx_int8"} <= flags:
        on += [option for option, needs in AMX if all(f in flags for f in needs)]
    name = "avx2" if "GGML_AVX2" in on else "generic"
    if "GGML_AVX512" in on:
        name = "avx512-amx" if "GGML_AMX_INT8" in on else "avx512"
    return name, on


def compiler_is_gcc() -> bool:
    compiler = os.environ.get("CXX") or "c++"
    try:
        banner = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Free Software Foundation" in banner or banner.lower().startswith(("g++", "c++ (", "gcc"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the venv's python")
    parser.add_argument("--constraints", default=None)
    args = parser.parse_args()
    python = Path(args.python)
    venv = python.parent.parent
    requested = os.environ.get("MEDAGENT_LLAMA_CPU", "native").strip().lower() or "native"
    machine = platform.machine().lower()
    if sys.platform.startswith("linux") and machine in ("x86_64", "amd64"):
        flags = cpu_flags()
        name, on = variant(requested, flags)
        off = [f"-D{option}=OFF" for option, _ in GGML_FEATURES + AMX if option not in on]
        cmake = ["-DGGML_NATIVE=OFF", *(f"-D{o}=ON" for o in on), *off, *LEAN]
        needs = sorted({f for option, req in GGML_FEATURES + AMX if option in on for f in req})
        cflags = AMX_GCC_FLAGS if "GGML_AMX_INT8" in on and compiler_is_gcc() else ""
    else:  # ARM, macOS...: llama.cpp's own defaults (no AMX there)
        name, cmake, needs, cflags = f"{sys.platform}-{machine}-native", list(LEAN), [], ""
    key = hashlib.sha256(json.dumps([VERSION, sys.version_info[:2], cmake, cflags]).encode()).hexdigest()[:12]
    home = Path(os.environ.get("MEDAGENT_HOME") or Path.home() / ".cache" / "medagent")
    wheels = home / "wheels" / f"llama-cpp-python-{VERSION}-{name}-{key}"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    started = time.monotonic()
    if not any(wheels.glob("llama_cpp_python-*.whl")):
        print(f"install_llama: compiling llama-cpp-python {VERSION} for the {name} variant "
              f"(about 4 minutes on 2 cores, once per CPU): {' '.join(cmake)}", flush=True)
        partial = wheels.with_name(wheels.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        env = {**os.environ, "CMAKE_ARGS": " ".join(cmake), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        if cflags:  # CMake starts CMAKE_C(XX)_FLAGS from these
            env["CFLAGS"] = f"{os.environ.get('CFLAGS', '')} {cflags}".strip()
            env["CXXFLAGS"] = f"{os.environ.get('CXXFLAGS', '')} {cflags}".strip()
        subprocess.run([*pip, "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
                        "-w", str(partial), f"llama-cpp-python=={VERSION}"], check=True, env=env)
        shutil.rmtree(wheels, ignore_errors=True)
        partial.rename(wheels)  # only a finished wheel is ever found there
    wheel = next(wheels.glob("llama_cpp_python-*.whl"))
    constraints = ["-c", args.constraints] if args.constraints else []
    subprocess.run([*pip, "install", *constraints, "--force-reinstall", "--no-deps", str(wheel)], check=True)
    # The [server] extra's own dependencies, from PyPI as usual.
    subprocess.run([*pip, "install", *constraints, "--find-links", str(wheels), "--only-binary", "llama-cpp-python",
                    f"llama-cpp-python[server]=={VERSION}"], check=True)
    record = venv / "share" / "medagent" / "llama-build.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"version": VERSION, "variant": name, "requested": requested, "cmake_args": cmake, "cflags": cflags,
                                  "cpu_flags_needed": needs, "wheel": str(wheel), "key": key}, indent=2) + "\n")
    print(f"install_llama: llama-cpp-python {VERSION} ({name} variant) installed in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
