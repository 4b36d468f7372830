"""Fixtures for the PMC-CLIP tests: a WordPiece tokenizer and tiny random-weight checkpoints saved as open_clip saves them.

The checkpoint is `{'epoch', 'name', 'state_dict': {'module.<key>': tensor}}` (open_clip's training format, what the
released `checkpoint.pt` is), from a tiny configuration of the real architecture, plus `pmcclip_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.pmcclip.model import PMCCLIP, BertShape, PMCCLIPConfig

WORDS = (
    "chest x-ray radiograph ct scan mri brain abdomen ultrasound histopathology pneumonia pleural effusion "
    "pneumothorax cardiomegaly normal fracture lung nodule liver kidney spleen a medical image of figure showing"
)


def tiny_config(vocab_size: int, cls_token_id: int) -> PMCCLIPConfig:
    bert = BertShape(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
    )
    return PMCCLIPConfig(
        embed_dim=32,
        image_size=64,
        vision_layers=(1, 1, 1, 1),
        vision_width=8,
        bert=bert,
        fusion_layers=1,
        fusion_heads=2,
        cls_token_id=cls_token_id,
    )


def make_tokenizer(folder: Path) -> Path:
    from medagent.training.pathology.recipe import build_tokenizer

    build_tokenizer([WORDS, *WORDS.split()], folder, vocab_size=300)
    return folder


def write_checkpoint(folder: Path, tokenizer_dir: Path, seed: int = 0, extra: dict | None = None) -> Path:
    """A tiny PMC-CLIP folder: checkpoint.pt in open_clip's format, the tokenizer, pmcclip_config.json."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for item in tokenizer_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    config = tiny_config(len(tokenizer), tokenizer.cls_token_id)
    torch.manual_seed(seed)
    state = {f"module.{k}": v for k, v in PMCCLIP(config).state_dict().items()}
    state.update(extra or {})
    torch.save({"epoch": 100, "name": "tiny", "state_dict": state}, folder / "checkpoint.pt")
    (folder / "pmcclip_config.json").write_text(json.dumps(config.to_dict()))
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("pmcclip_tokenizer"))


@pytest.fixture(scope="session")
def pmcclip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("pmcclip"), tokenizer_dir)


@pytest.fixture(scope="session")
def checkpoint_factory():
    """`write_checkpoint(folder, tokenizer_dir, seed=0, extra=None)` for tests that need their own copy."""
    return write_checkpoint
