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

What a real run needs beyond that is here too, so every recipe gets it the same way: `Stepper` (gradient
accumulation with DDP's `no_sync`, mixed precision on CUDA, clipping, the schedule), `Resume` (a `resume.pt`
every `train.checkpoint_every` optimizer steps, with every rank's random state; `resume=true` continues from
it), `warmup_cosine`, and `loader` (a DataLoader with workers over this rank's padded share).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
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
    group: bool = False  # a process group is up (several processes, or FSDP on one GPU)

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
        if (self.distributed or self.group) and torch.distributed.is_initialized():
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
    # FSDP needs a process group even on one GPU (`strategy: fsdp` with one process shards over a world of 1:
    # the same code path as several GPUs, which is what the one-GPU check runs).
    one_gpu_fsdp = world == 1 and cfg.get("strategy") == "fsdp" and device.type == "cuda"
    if (world > 1 or one_gpu_fsdp) and not torch.distributed.is_initialized():
        if one_gpu_fsdp and "MASTER_ADDR" not in os.environ:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Run(rank=rank, world=world, device=device, group=torch.distributed.is_initialized())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uses_fsdp(cfg: dict[str, Any], run: Run) -> bool:
    """The config's `strategy:` (ddp, the default, or fsdp): True when FSDP shards the model in this run (several
    processes); fsdp on a CPU device is refused."""
    strategy = cfg.get("strategy", "ddp")
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"strategy: '{strategy}' is not ddp or fsdp")
    fsdp = (run.distributed or run.group) and strategy == "fsdp"
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


# ---------------------------------------------------------------- optimizer steps: accumulation, precision

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Stepper:
    """Optimizer steps made of `train.accumulate` micro-batches each, under `train.precision`.

    Per micro-batch, with `index` counting micro-batches from 0 over the whole run (`total` of them):

        with stepper.micro(index):          # autocast; DDP skips the gradient all-reduce (no_sync) unless
            loss = model(**batch).loss      # this micro-batch closes an optimizer step
            stepper.backward(loss, index)   # loss / (micro-batches in this step), GradScaler under fp16
        stepper.step(index)                 # on the last micro-batch of a step: unscale, clip, step, schedule

    The gradient of a step is then the mean over all of its micro-batches, as one batch of that size would give
    (tests/training/test_common.py checks it against the whole batch). When `total` does not divide by
    `accumulate`, the last step is made of the remainder and its micro-batches are weighted by that count.
    Precision: `fp32` (default), `bf16` (autocast to bfloat16; on CPU too, slowly), `fp16` (CUDA only, with a
    GradScaler). Parameters stay float32 in every case: only the forward computes in the lower precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Any | None,
        train: dict[str, Any],
        run: Run,
        total: int,
        parameters: Iterable[torch.nn.Parameter] | None = None,
    ) -> None:
        self.model, self.optimizer, self.schedule, self.run = model, optimizer, schedule, run
        self.accumulate = int(train.get("accumulate") if train.get("accumulate") is not None else 1)
        if self.accumulate < 1:
            raise ConfigError(f"train.accumulate: {self.accumulate} must be 1 or more")
        precision = str(train.get("precision", "fp32"))
        if precision not in PRECISIONS:
            raise ConfigError(f"train.precision: '{precision}' is not fp32, bf16 or fp16")
        if precision == "fp16" and run.device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs a CUDA device (on CPU use bf16 or fp32)")
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.clip = float(train.get("grad_clip", 1.0) or 0.0)
        self.total = int(total)
        self.parameters = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]

    @staticmethod
    def steps_for(total: int, train: dict[str, Any]) -> int:
        """Optimizer steps that `total` micro-batches make (for the schedule's length)."""
        return math.ceil(int(total) / int(train.get("accumulate", 1) or 1))

    @property
    def steps(self) -> int:
        return math.ceil(self.total / self.accumulate)

    def closes(self, index: int) -> bool:
        """True when micro-batch `index` is the last of its optimizer step."""
        return (index + 1) % self.accumulate == 0 or index + 1 == self.total

    def step_of(self, index: int) -> int:
        """The optimizer step (from 0) that micro-batch `index` belongs to."""
        return index // self.accumulate

    def _share(self, index: int) -> int:
        start = self.step_of(index) * self.accumulate
        return min(self.accumulate, self.total - start)

    def autocast(self) -> Any:
        """The precision's autocast (also for evaluation inside a run); a no-op for fp32."""
        return torch.autocast(self.run.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @contextmanager
    def micro(self, index: int) -> Iterator[None]:
        sync = self.closes(index) or not hasattr(self.model, "no_sync")
        with nullcontext() if sync else self.model.no_sync(), self.autocast():
            yield

    def backward(self, loss: torch.Tensor, index: int) -> None:
        self.scaler.scale(loss / self._share(index)).backward()

    def step(self, index: int) -> bool:
        """Closes the optimizer step on its last micro-batch (else does nothing); True when it stepped."""
        if not self.closes(index):
            return False
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            if hasattr(self.model, "clip_grad_norm_"):  # FSDP: the norm over every rank's shards
                self.model.clip_grad_norm_(self.clip)
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule is not None:
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True


# ---------------------------------------------------------------- resumable checkpoints


class Resume:
    """`resume.pt` in the output folder: written every `train.checkpoint_every` optimizer steps (0: never),
    atomically, by rank 0; with `resume: true` the same command continues after the last one.

    It holds the model (only the parameters that train, plus buffers: a frozen 7B base is not copied into every
    checkpoint), the optimizer, the schedule, the GradScaler, the step, and every rank's random state (Python,
    torch, CUDA, and any `random.Random` / `torch.Generator` a recipe draws its batches with), so the resumed
    run draws the very batches the interrupted one would have. A plain or DDP model is saved with its own
    state_dict and the optimizer's index-keyed one (which loads back state for exactly the parameters that had
    some); under FSDP, torch.distributed.checkpoint's `get_state_dict` / `set_state_dict` gather full state dicts
    (every rank takes part). DCP's name-keyed optimizer state loses parameters a model registers under two names
    (MONAI's UNet), which is why it is not used for the others. The finished run removes the file (`done`).
    """

    def __init__(self, run: Run, folder: Path, cfg: dict[str, Any]) -> None:
        self.run, self.path = run, Path(folder) / "resume.pt"
        self.every = int((cfg.get("train") or {}).get("checkpoint_every") or 0)
        self.wanted = bool(cfg.get("resume", False))

    def saved_step(self) -> int:
        """The optimizer step resume.pt was written after; -1 when there is nothing to resume. For a recipe that
        must know before loading which part of the run the checkpoint holds (pathology's two stages); mmap, so the
        tensors are not read."""
        if not (self.wanted and self.path.is_file()):
            return -1
        return int(torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)["step"])

    def _options(self, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, ignore_frozen_params=True, **kwargs)

    def _randoms(self, draws: dict[str, Any]) -> dict[str, Any]:
        mine: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if self.run.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.run.device)
        for name, draw in draws.items():
            mine[name] = draw.get_state() if isinstance(draw, torch.Generator) else draw.getstate()
        return mine

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **others: Any) -> None:
        """After optimizer step `step` (from 0) when it falls on the interval. `others`: objects with
        state_dict() (schedule, scaler) and random draws (random.Random, torch.Generator)."""
        if not self.every or (step + 1) % self.every:
            return
        model_state, optim_state = self._state(model, optimizer)
        draws = {k: v for k, v in others.items() if isinstance(v, (random.Random, torch.Generator))}
        state = {
            "step": step,
            "model": model_state,
            "optimizer": optim_state,
            "others": {k: v.state_dict() for k, v in others.items() if k not in draws},
            "randoms": gather_objects(self.run, self._randoms(draws)),
            "world": self.run.world,
        }
        self.run.on_main(save_atomic, state, self.path)
        self.run.log(f"checkpoint after step {step}: {self.path}")

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **others: Any) -> int:
        """The first optimizer step to run: 0 for a new run, else the one after the checkpoint's (whose state
        is then loaded into `model`, `optimizer` and `others`)."""
        if not self.wanted:
            return 0
        if not self.path.is_file():
            self.run.log(f"resume: no {self.path} yet, starting from step 0")
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state["world"] != self.run.world:
            raise ConfigError(
                f"resume: {self.path} was written by {state['world']} processes, this run has {self.run.world}; "
                "resume with the same number (each rank's batch order is in it)"
            )
        self._restore(model, optimizer, state["model"], state["optimizer"])
        mine = state["randoms"][self.run.rank]
        random.setstate(mine["python"])
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and self.run.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], self.run.device)
        for name, value in others.items():
            if isinstance(value, torch.Generator):
                value.set_state(mine[name])
            elif isinstance(value, random.Random):
                value.setstate(mine[name])
            else:
                value.load_state_dict(state["others"][name])
        self.run.log(f"resumed from {self.path} after step {state['step']}")
        return int(state["step"]) + 1

    @staticmethod
    def _sharded(model: torch.nn.Module) -> bool:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return any(isinstance(module, FullyShardedDataParallel) for module in model.modules())

    def _state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        if self._sharded(model):
            from torch.distributed.checkpoint.state_dict import get_state_dict

            return get_state_dict(model, optimizer, options=self._options(cpu_offload=True))
        module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
        weights = {k: v.detach().cpu() for k, v in module.state_dict().items() if k not in frozen}
        return weights, optimizer.state_dict()

    def _restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict) -> None:
        if not self._sharded(model):
            module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
            missing, unexpected = module.load_state_dict(weights, strict=False)
            frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
            if unexpected or set(missing) - frozen:
                raise ConfigError(
                    f"resume: {self.path} does not fit this model (missing {sorted(set(missing) - frozen)[:3]}, "
                    f"unexpected {sorted(unexpected)[:3]}); was it written by another config?"
                )
            optimizer.load_state_dict(optim)
            return
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim, options=self._options(strict=False))
        # DCP gives every trainable parameter an optimizer state, a made-up one (step 1, zero moments) where the
        # checkpoint has none (a parameter that was frozen when it was written): drop those, so its first real
        # update starts from scratch as in the uninterrupted run.
        saved, names = set(optim["state"]), {}
        for name, parameter in model.named_parameters(remove_duplicate=False):
            names.setdefault(parameter, set()).add(_clean_name(name))
        for parameter, aliases in names.items():
            if not aliases & saved:
                optimizer.state.pop(parameter, None)

    def done(self) -> None:
        """The run finished: nothing is left to resume (rank 0 removes the file)."""
        self.run.on_main(self.path.unlink, missing_ok=True)


def _clean_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (DDP, FSDP, activation checkpointing), as
    torch.distributed.checkpoint's state dicts name it."""
    for wrapper in ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


# ---------------------------------------------------------------- data loading


def loader(
    dataset: Sequence[Any], batch_size: int, run: Run, seed: int, workers: int = 0, collate: Callable | None = None,
    shuffle: bool = True,
) -> torch.utils.data.DataLoader:
    """A DataLoader over this rank's padded share (`sampler`): every rank the same number of batches, read by
    `workers` processes (0: in this process). Call `.sampler.set_epoch(epoch)` before each epoch."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler(dataset, run, seed, shuffle), num_workers=workers,
        collate_fn=collate, persistent_workers=workers > 0, drop_last=False, generator=generator(seed, run),
    )  # fmt: skip


def generator(seed: int, run: Run) -> torch.Generator:
    """A DataLoader's own generator: without one, every pass over a DataLoader takes a draw from torch's global
    random state (its workers' base seed), so a resumed run that skips epochs would shift the dropout masks."""
    return torch.Generator().manual_seed(int(seed) * 1000 + run.rank)


class TrainLog:
    """`train_log.jsonl` in the output folder, one JSON record per logged step, written by rank 0 and flushed
    at once (a killed run keeps what it logged); a resumed run appends to it."""

    def __init__(self, run: Run, folder: Path, append: bool) -> None:
        self.run = run
        self.path = Path(folder) / "train_log.jsonl"
        self.file = self.path.open("a" if append else "w", encoding="utf-8") if run.main else None

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            import json

            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class BatchPlan:
    """The run's batches of `(index, epoch)` keys, epoch by epoch (this rank's padded share of each shuffled order,
    `rank_batches`), from micro-batch `start` on: one iterable for the whole run, as a DataLoader's
    `batch_sampler`, so its workers start once and a resumed run skips finished batches without reading them.
    The epoch travels with each index so a dataset can draw that sample's augmentation from (seed, epoch, index)."""

    def __init__(self, count: int, batch_size: int, run: Run, seed: int, epochs: int, start: int) -> None:
        self.count, self.batch_size, self.run, self.seed = count, batch_size, run, seed
        self.epochs, self.start = epochs, start
        self.per_epoch = len(rank_batches(count, batch_size, run, seed, 0))

    def __len__(self) -> int:
        return max(0, self.per_epoch * self.epochs - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.start // max(1, self.per_epoch), self.epochs):
            batches = rank_batches(self.count, self.batch_size, self.run, self.seed, epoch)
            for batch in batches[max(0, self.start - epoch * self.per_epoch) :]:
                yield [(index, epoch) for index in batch]
