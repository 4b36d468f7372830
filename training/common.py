"""What every recipe sets up the same way: seed, device, processes, rank-aware logging and saving, batches.

A recipe calls `setup(cfg)` once and gets a `Run` (rank, world size, device); the rest of the recipe still
reads top to bottom. One `device:` key in every config: `auto` (CUDA when there is one, else CPU), `cpu`,
`cuda` or `cuda:N`. Under torchrun (WORLD_SIZE > 1) the process group is started with the backend that fits
the device -- NCCL on CUDA, gloo on CPU -- and each process takes `cuda:LOCAL_RANK` (LOCAL_RANK defaults to 0,
read in this one place; the N of `cuda:N` only counts in a single process).

Every rank must run the same number of steps, or the collectives of the longer rank wait forever. The batching
helpers here pad rather than drop: torch's `DistributedSampler` with `drop_last=False` repeats the first indices
of the shuffled order until it divides by the world size, so each rank gets ceil(n / world) samples and the
same number of batches, and no sample is left out of an epoch.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from medagent.tools.errors import ConfigError

T = TypeVar("T")

# Keys that held the device before `device:`; a config that still has one is refused with the new spelling.
LEGACY_DEVICE_KEYS = (("model", "device"), ("train", "device"))


@dataclass(frozen=True)
class Run:
    """This process's place in the run: rank `rank` of `world`, training on `device`."""

    rank: int
    world: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    def log(self, message: str) -> None:
        """Rank 0 prints; the others stay quiet (one line per event, not one per process)."""
        if self.main:
            print(message, flush=True)

    def log_all(self, message: str) -> None:
        """Every rank prints, tagged `[rank R/W]` (for what differs per rank, such as its step count)."""
        print(f"[rank {self.rank}/{self.world}] {message}", flush=True)

    def finished(self, recipe: str, steps: int, loss: float) -> None:
        """The closing line of a run, one per rank: `[rank R/W] <recipe>: N steps, final loss L`."""
        self.log_all(f"{recipe}: {steps} steps, final loss {loss:.4f}")

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def on_main(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Rank 0 runs `write` (a checkpoint, a data folder, a tokenizer); then every rank waits for it to finish,
        so no rank reads a half-written file or exits before the checkpoint exists. Returns `write`'s result on
        rank 0, None elsewhere."""
        result = write(*args, **kwargs) if self.main else None
        self.barrier()
        return result

    def close(self) -> None:
        """End the process group (after a last barrier, so rank 0's writes are done)."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@contextmanager
def threads(cfg: dict[str, Any]) -> Iterator[None]:
    """The config's `threads:` for torch while the recipe runs (tiny smoke models run several times faster on one
    thread), the caller's count restored afterwards so a test process is not left single-threaded."""
    previous = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: int, min_ratio: float = 0.0) -> Any:
    """Linear warm-up over `warmup` steps, then cosine down to `min_ratio` of the peak at step `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def gather_objects(run: Run, value: T) -> list[T]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not run.distributed:
        return [value]
    values: list[Any] = [None] * run.world
    torch.distributed.all_gather_object(values, value)
    return values


def save_atomic(value: Any, path: Path) -> Path:
    """torch.save through a temporary file and a rename: a run killed mid-write leaves the last good file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(value, partial)
    os.replace(partial, path)
    return path


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch from one seed (the same on every rank: replicas start identical)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int, distributed: bool) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> a torch device; under torchrun each process takes cuda:LOCAL_RANK."""
    name = str(name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: '{name}' is not auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: '{name}' is not auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU (use device=cpu or auto)")
        device = torch.device("cuda", local_rank if distributed else (device.index or 0))
        torch.cuda.set_device(device)
    return device


def setup(cfg: dict[str, Any]) -> Run:
    """Seed, device and (under torchrun) the process group, from the config's `seed` and `device` keys."""
    for section, key in LEGACY_DEVICE_KEYS:
        if isinstance(cfg.get(section), dict) and key in cfg[section]:
            raise ConfigError(f"{section}.{key} is now the top-level `device:` key (auto, cpu, cuda or cuda:N)")
    seed_everything(int(cfg.get("seed", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.get("device", "auto"), local_rank, world > 1)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Run(rank=rank, world=world, device=device)


def uses_fsdp(cfg: dict[str, Any], run: Run) -> bool:
    """The config's `strategy:` (ddp, the default, or fsdp): True when FSDP shards the model in this run (several
    processes); fsdp on a CPU device is refused."""
    strategy = cfg.get("strategy", "ddp")
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"strategy: '{strategy}' is not ddp or fsdp")
    fsdp = run.distributed and strategy == "fsdp"
    if fsdp and run.device.type != "cuda":
        raise ConfigError("strategy: fsdp needs CUDA devices; on CPU use strategy=ddp")
    return fsdp


def ddp(model: torch.nn.Module, run: Run, **kwargs: Any) -> torch.nn.Module:
    """The model under DistributedDataParallel when there are several processes, else itself."""
    if not run.distributed:
        return model
    device_ids = [run.device.index] if run.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def sampler(dataset: Sequence[Any], run: Run, seed: int, shuffle: bool = True) -> torch.utils.data.DistributedSampler:
    """For a DataLoader: this rank's share of `dataset`, padded (drop_last=False) so every rank gets as many.
    Call `.set_epoch(epoch)` before each epoch for a new order. With one process it is the whole shuffled set."""
    return torch.utils.data.DistributedSampler(
        dataset, num_replicas=run.world, rank=run.rank, shuffle=shuffle, seed=seed, drop_last=False
    )


def rank_batches(count: int, batch_size: int, run: Run, seed: int, epoch: int) -> list[list[int]]:
    """This rank's index batches over `count` samples for one epoch (shuffled by seed + epoch, padded as above):
    ceil(ceil(count / world) / batch_size) batches on every rank."""
    order = sampler(range(count), run, seed)
    order.set_epoch(epoch)
    indices = list(order)
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def rank_share(items: Sequence[T], run: Run) -> list[T]:
    """This rank's share of an already-shuffled list (the same list on every rank), padded like the sampler:
    the list is extended by its own first items up to a multiple of the world size, then split by rank."""
    items = list(items)
    if not items:
        return []
    padded = items + [items[i % len(items)] for i in range((-len(items)) % run.world)]
    return padded[run.rank :: run.world]
