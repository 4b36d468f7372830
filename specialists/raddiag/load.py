"""Loading RadDiag checkpoints: find the weights, read the variant, strict load by name.

The published files (HF `QiaoyuZheng/RadDiag`, MIT: an early- and a late-fusion folder, each with the HF
Trainer's `pytorch_model.bin`; also `pytorch_model_32_late.bin` in `QiaoyuZheng/RP3D-DiagModel`) are flat
state_dicts without a prefix. Their layout here is the one derived from the authors' code
(tests/data/raddiag/*_state_dict.json), **not yet checked against the released weights**.

The authors' model card loads with `strict=False`. This loader is strict about everything forward uses:
a missing used key, an unexpected key or another shape is an error naming them. Only the keys forward never
runs are optional (a re-saved or pruned file may lack them): the ResNet's 1000-class ImageNet head
`resnet2D.fc.*` and the template modules of each transformer wrapper
(`*.transformer_encoder.{multi_headed_attention,feed_forward,encoder_layer}.*`). Those keep their random
initial values and are listed in `LoadedRadDiag.absent_optional`.

A folder may carry medagent's `raddiag_config.json` (written by the recipe and the tests' tiny models);
without it the published configuration is used and the fusion read from the keys (`vitFuse.*` = early).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medagent.specialists import _checkpoints as checkpoints
from medagent.specialists.raddiag.model import RadDiagConfig, RadNet, build_model, published_config

WEIGHT_NAMES = ("pytorch_model.bin", "pytorch_model_32_late.bin", "model.safetensors", "model.pt")
CONFIG_NAME = "raddiag_config.json"
OPTIONAL_PARTS = (
    "resnet2D.fc.",
    "transformer_encoder.multi_headed_attention.",
    "transformer_encoder.feed_forward.",
    "transformer_encoder.encoder_layer.",
)


class CheckpointError(ValueError):
    """The weights in a RadDiag folder are missing or do not fit the architecture."""


@dataclass
class LoadedRadDiag:
    model: RadNet
    config: RadDiagConfig
    weights: Path
    absent_optional: list[str] = field(default_factory=list)


def is_optional(key: str) -> bool:
    """Keys forward never uses: the ImageNet head and the transformer wrappers' template modules."""
    return key.startswith("resnet2D.fc.") or any(part in key for part in OPTIONAL_PARTS[1:])


def find_weights(path: Path) -> Path:
    """The weights file in a checkpoint folder (or the file itself)."""
    return checkpoints.find_weights(path, WEIGHT_NAMES, "RadDiag", CheckpointError)


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    return checkpoints.read_state_dict(weights, CheckpointError)


def config_for(folder: Path, state: dict[str, torch.Tensor]) -> RadDiagConfig:
    fusion = "early" if any(k.startswith("vitFuse.") for k in state) else "late"
    config_file = folder / CONFIG_NAME
    if config_file.is_file():
        try:
            config = RadDiagConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{config_file}: {exc}") from exc
        if config.fusion != fusion:
            raise CheckpointError(f"{config_file}: says {config.fusion} fusion but the weights are {fusion} fusion")
        return config
    return published_config(fusion)


def check_keys(model: RadNet, state: dict[str, torch.Tensor], source: Path) -> list[str]:
    """The optional keys the file lacks; a CheckpointError for anything else that does not fit."""
    expected = model.state_dict()
    missing, unexpected, wrong = checkpoints.mismatches(expected, state, optional=is_optional)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not fit the RadDiag {model.config.fusion}-fusion architecture: "
            + checkpoints.summary(missing, unexpected, wrong)
        )
    return [k for k in expected if k not in state]


def load_raddiag(path: Path, device: str = "cpu") -> LoadedRadDiag:
    """Build the architecture the weights describe and load them by name; eval mode on `device`."""
    weights = find_weights(Path(path))
    state = read_state_dict(weights)
    config = config_for(weights.parent, state)
    model = build_model(config)
    absent = check_keys(model, state, weights)
    # strict=False only for the optional keys check_keys allowed to be absent; everything else was checked.
    result = model.load_state_dict(state, strict=not absent)
    assert not result.unexpected_keys and set(result.missing_keys) == set(absent)
    model.eval().to(device)
    return LoadedRadDiag(model=model, config=config, weights=weights, absent_optional=absent)


def save_checkpoint(model: RadNet, folder: Path) -> Path:
    """The published layout (flat state_dict, no prefix, `pytorch_model.bin`) plus medagent's config file."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=1), encoding="utf-8")
    return folder / "pytorch_model.bin"
