"""What the KEP, RadDiag and PMC-CLIP loaders share: find a weights file, read a flat state_dict, list mismatches.

Each loader keeps its own error class and wording (`what` names the model in messages); the reading is one code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Wrappers training scripts save a state_dict under (open_clip: `state_dict`; others `model`, `model_state_dict`).
WRAPPERS = ("state_dict", "model", "model_state_dict")


def find_weights(path: Path, names: tuple[str, ...], what: str, error: type[Exception], glob: str | None = None) -> Path:
    """The weights file in a checkpoint folder (or the file itself): the first of `names`, else the newest file
    matching `glob` (a training run's `epoch_*.pt`)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise error(f"{path}: no such {what} checkpoint file or folder")
    for name in names:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob(glob), key=lambda p: p.stat().st_mtime) if glob else []
    if found:
        return found[-1]
    raise error(f"{path}: no {what} weights found (expected one of {', '.join(names)}{f' or {glob}' if glob else ''})")


def read_state_dict(weights: Path, error: type[Exception]) -> dict[str, torch.Tensor]:
    """A flat state_dict of tensors from a plain dict, a wrapped one (WRAPPERS) or a DDP (`module.`) checkpoint;
    safetensors too. Memory-mapped, so a large file is not read twice."""
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(weights))
        else:
            raw = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise error(f"{weights}: not a readable PyTorch checkpoint ({exc})") from exc
    for wrapper in WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise error(f"{weights}: expected a state_dict of tensors")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in raw.items()}


def mismatches(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
               optional: Any = None) -> tuple[list[str], list[str], list[str]]:  # fmt: skip
    """(missing, unexpected, "key [found] != [expected]" shape clashes) of `state` against a model's state_dict;
    keys for which `optional(key)` is true may be missing."""
    missing = [k for k in expected if k not in state and not (optional and optional(k))]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} != {list(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]  # fmt: skip
    return missing, unexpected, wrong


def summary(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """One line naming the first mismatches: "2 missing (e.g. a, b), 1 unexpected (e.g. c)"."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        parts.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:2])})")
    return ", ".join(parts)
