"""Loading PMC-CLIP: find `checkpoint.pt`, unwrap open_clip's `{'state_dict': {'module.…': …}}`, strict load, tokenizer.

A checkpoint folder holds the weights (`checkpoint.pt` as released in the HF dataset `axiong/pmc_oa_beta`, or
any `*.pt` file given directly), PubMedBERT's tokenizer files (vocab.txt or tokenizer.json: the released
checkpoint does not carry them) and optionally medagent's `pmcclip_config.json` (tiny or retrained models;
without it the released `RN50_fusion4` configuration is used). The runtime never downloads anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medagent.specialists import _checkpoints as checkpoints
from medagent.specialists.pmcclip.model import PMCCLIP, PMCCLIPConfig, published_config

WEIGHT_NAMES = ("checkpoint.pt", "pytorch_model.bin", "model.pt")
CONFIG_NAME = "pmcclip_config.json"
# Buffers older transformers saved with BERT; derived, so a current BertModel has no such key.
_DERIVED = ("text_encoder.embeddings.position_ids",)


class CheckpointError(ValueError):
    """The weights or tokenizer in a PMC-CLIP folder are missing or do not fit the architecture."""


@dataclass
class LoadedPMCCLIP:
    model: PMCCLIP
    tokenizer: Any
    config: PMCCLIPConfig
    weights: Path
    ignored_keys: list[str] = field(default_factory=list)


def find_weights(path: Path) -> Path:
    """The weights file in a checkpoint folder (or the file itself)."""
    return checkpoints.find_weights(path, WEIGHT_NAMES, "PMC-CLIP", CheckpointError)


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The flat state_dict of an open_clip training checkpoint (`state_dict`, `module.` prefix) or a plain one."""
    return checkpoints.read_state_dict(weights, CheckpointError)


def config_for(folder: Path, state: dict[str, torch.Tensor]) -> PMCCLIPConfig:
    config_file = folder / CONFIG_NAME
    if config_file.is_file():
        try:
            return PMCCLIPConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{config_file}: {exc}") from exc
    words = state.get("text_encoder.embeddings.word_embeddings.weight")
    return published_config(int(words.shape[0]) if words is not None else 30522)


def strict_load(model: PMCCLIP, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict(strict=True), failing with one line that names the mismatched keys."""
    missing, unexpected, wrong = checkpoints.mismatches(model.state_dict(), state)
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with other shapes", wrong)):
            if keys:
                more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:5])}{more}")
        raise CheckpointError(f"{source}: weights do not fit the PMC-CLIP architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_tokenizer(folder: Path, max_length: int) -> Any:
    """PubMedBERT's tokenizer from the checkpoint folder (lower-cased WordPiece); never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer, BertTokenizerFast

    try:
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        elif (folder / "vocab.txt").is_file():
            # from_pretrained, not BertTokenizerFast(vocab_file=...): transformers 5 ignores that keyword.
            tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True, do_lower_case=True)
        else:
            raise CheckpointError(
                f"{folder}: no tokenizer (put PubMedBERT's vocab.txt, from HF "
                "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext, beside checkpoint.pt)"
            )
    except (OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{folder}: tokenizer files present but unreadable ({exc})") from exc
    tokenizer.model_max_length = max_length
    return tokenizer


def load_pmcclip(path: Path, device: str = "cpu") -> LoadedPMCCLIP:
    """Build the architecture, load the weights strictly, pair it with its tokenizer; eval mode on `device`."""
    weights = find_weights(Path(path))
    folder = weights.parent
    state = read_state_dict(weights)
    ignored = [k for k in state if k in _DERIVED]
    state = {k: v for k, v in state.items() if k not in _DERIVED}
    config = config_for(folder, state)
    tokenizer = load_tokenizer(folder, config.context_length)
    if len(tokenizer) > config.bert.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens but the text tower {config.bert.vocab_size}; "
            "the tokenizer does not belong to these weights"
        )
    if tokenizer.cls_token_id != config.cls_token_id:
        raise CheckpointError(
            f"{folder}: the tokenizer's [CLS] is id {tokenizer.cls_token_id}, the model reads id {config.cls_token_id}"
        )
    model = PMCCLIP(config)
    strict_load(model, state, weights)
    model.eval().to(device)
    return LoadedPMCCLIP(model=model, tokenizer=tokenizer, config=config, weights=weights, ignored_keys=ignored)
