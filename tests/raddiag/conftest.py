"""Fixtures for the RadDiag tests: tiny random-weight configs of the real architecture, saved in the published layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medagent.specialists.raddiag.load import save_checkpoint
from medagent.specialists.raddiag.model import RadDiagConfig, build_model

DATA = Path(__file__).resolve().parents[1] / "data" / "raddiag"


def tiny_config(fusion: str = "early", **overrides) -> RadDiagConfig:
    """ResNet narrowed to one block per stage (hidden 64), 16-px slices, 8 slices, the real 5,569 classes."""
    values = dict(fusion=fusion, resnet_layers=(1, 1, 1, 1), resnet_channels=(4, 8, 16, 16), stem_width=8,
                  image_size=16, max_depth=8, fuse_heads=4, dropout=0.0)  # fmt: skip
    values.update(overrides)
    return RadDiagConfig(**values)


def write_checkpoint(folder: Path, fusion: str = "early", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(build_model(tiny_config(fusion)), folder)
    return folder


@pytest.fixture(scope="session")
def early_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("raddiag_early"), "early")


@pytest.fixture(scope="session")
def late_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("raddiag_late"), "late")
