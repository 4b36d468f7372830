"""The model pool: the one owner of loaded models, graphs, linkers, indexes and LLM backends.

A run (or a process serving many runs: chat, the eval runner, the Python API) holds one `ModelPool`.
`get(key, loader)` loads each key once and shares it across threads; `loaded()` says what is held and
about how much memory it takes; `close()` frees it all. Specialists' load functions stay plain loaders.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class PoolEntry(BaseModel):
    """One loaded thing, as `loaded()` reports it."""

    key: str
    kind: str  # the class of the object held
    bytes: int | None  # estimated memory; None when nothing could be measured
    estimate: str  # how `bytes` was found
    load_s: float


def _rss() -> int | None:
    """This process's resident memory (Linux /proc; psutil elsewhere when installed), or None."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except (ImportError, OSError):
        return None


def _torch_bytes(value: Any) -> int | None:
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.nn.Module):
        return None
    tensors = list(value.parameters()) + list(value.buffers())
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def estimate(value: Any) -> tuple[int | None, str]:
    """(bytes, how): torch parameters+buffers (of the object or its `.model`), numpy nbytes, a model file's
    size (`.model_path`); (None, "") otherwise."""
    size = _torch_bytes(value)
    if size is not None:
        return size, "torch parameters+buffers"
    size = _torch_bytes(getattr(value, "model", None))  # a wrapper (a transformers backend) around its network
    if size is not None:
        return size, "torch parameters+buffers of .model"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return int(value.nbytes), "numpy nbytes"
    model_path = getattr(value, "model_path", None)  # llama.cpp: the weights are the GGUF, memory-mapped
    if isinstance(model_path, (str, Path)) and Path(model_path).is_file():
        return Path(model_path).stat().st_size, "model file size"
    return None, ""


def key_text(key: Hashable) -> str:
    return " ".join(str(part) for part in key) if isinstance(key, tuple) else str(key)


class _Held:
    __slots__ = ("value", "entry")

    def __init__(self, value: Any, entry: PoolEntry) -> None:
        self.value, self.entry = value, entry


class ModelPool:
    """Loaded objects by key, each loaded once (a per-key lock: concurrent askers wait for one load)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Hashable, _Held] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._local = threading.local()  # RSS growth of loads nested in the one being measured
        self.loads: dict[Hashable, int] = {}  # how often each key's loader ran (once, unless closed between)
        self._closes = 0  # a load that finishes after a close() is returned but not kept

    def get(self, key: Hashable, loader: Callable[[], T]) -> T:
        """The object under `key`, loading it with `loader()` the first time. A loader that raises caches nothing."""
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                return held.value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                held, closes = self._held.get(key), self._closes
            if held is not None:
                return held.value
            value, entry = self._load(key, loader)
            with self._lock:
                self.loads[key] = self.loads.get(key, 0) + 1
                if closes == self._closes:
                    self._held[key] = _Held(value, entry)
            return value

    def _load(self, key: Hashable, loader: Callable[[], T]) -> tuple[T, PoolEntry]:
        outer = getattr(self._local, "nested", None)
        self._local.nested = 0
        before, started = _rss(), time.monotonic()
        try:
            value = loader()
        finally:
            nested, self._local.nested = self._local.nested, outer
        seconds, after = time.monotonic() - started, _rss()
        size, how = estimate(value)
        if size is None and before is not None and after is not None:
            size, how = max(0, after - before - nested), "RSS growth during the load"
        if outer is not None and before is not None and after is not None:
            self._local.nested = outer + max(0, after - before)
        return value, PoolEntry(key=key_text(key), kind=type(value).__name__, bytes=size, estimate=how, load_s=round(seconds, 3))

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._held

    def loaded(self) -> list[PoolEntry]:
        """What the pool holds now, in load order."""
        with self._lock:
            return [held.entry for held in self._held.values()]

    def total_bytes(self) -> int:
        return sum(entry.bytes or 0 for entry in self.loaded())

    def drop(self, which: Callable[[Hashable], bool]) -> None:
        """Free the objects whose key `which` accepts (e.g. to hold one network of a kind at a time)."""
        with self._lock:
            held = [self._held.pop(key) for key in [k for k in self._held if which(k)]]
        self._free(held)

    def close(self) -> None:
        """Drop every object (calling `close()` on those that have one); the pool can be used again."""
        with self._lock:
            held, self._held, self._key_locks = list(self._held.values()), {}, {}
            self._closes += 1
        self._free(held)

    @staticmethod
    def _free(held: list[_Held]) -> None:
        if not held:
            return
        for item in reversed(held):
            close = getattr(item.value, "close", None)
            item.value = None
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - freeing the rest matters more than one object's close error
                    pass
        held.clear()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(entries: list[PoolEntry]) -> list[str]:
    """Lines for people: each held object with its estimated size."""
    return [f"{e.key}: {mib(e.bytes)} ({e.estimate or 'not measured'}), loaded in {e.load_s:.1f} s" for e in entries]


def mib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**20:.1f} MiB"


def file_bytes(path: os.PathLike | str) -> int:
    """A file's size, or a folder's total (what loading it would read)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
