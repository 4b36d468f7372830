"""Loading KEP checkpoints: find the weights, pick the variant, map names, strict load, tokenizer.

A checkpoint folder holds the weights (`pytorch_model.bin`, or a training `epoch_*.pt` /
`*.pth` / `model.safetensors`), the tokenizer files of its PubMedBERT (vocab.txt or tokenizer.json)
and optionally medagent's `kep_config.json` (written by the training recipe; without it the
published KEP-32/16/CTP configuration is used, the variant read from the key names).

A KEEP folder (HF `Astaxanthin/KEEP`, fetched by the user: the runtime never downloads) holds the
weights, the tokenizer and KEEP's own `config.json` (`model_type: keep`, `text_config` = the BERT
config, `projection_dim`); the text tower is built from that `text_config`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medagent.specialists import _checkpoints as checkpoints
from medagent.specialists.pathology.model import (
    KEEP,
    KEP,
    BertShape,
    KEPConfig,
    Variant,
    build_model,
    ctp_key_from_published,
    published_config,
)

WEIGHT_NAMES = ("pytorch_model.bin", "model.safetensors", "model.pt", "model.pth", "checkpoint.pt")
CONFIG_NAME = "kep_config.json"
# Buffers older transformers saved with BERT; they are derived, so a current BertModel does not expect them.
_DERIVED_BERT_BUFFERS = ("embeddings.position_ids",)


class CheckpointError(ValueError):
    """The weights or tokenizer in a KEP folder are missing or do not fit the architecture."""


@dataclass
class LoadedKEP:
    model: KEP | KEEP
    tokenizer: Any
    config: KEPConfig
    weights: Path
    ignored_keys: list[str] = field(default_factory=list)


def find_weights(path: Path) -> Path:
    """The weights file in a checkpoint folder (or the file itself)."""
    return checkpoints.find_weights(path, WEIGHT_NAMES, "KEP", CheckpointError, glob="epoch_*.pt")


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """A flat state_dict from a plain dict, `{'state_dict': ...}` or a DDP (`module.`) checkpoint."""
    return checkpoints.read_state_dict(weights, CheckpointError)


def detect_variant(keys: list[str] | set[str]) -> Variant:
    keys = set(keys)
    if "visual.conv1.weight" in keys:
        return "kep32"
    if "visual.trunk.pos_embed" in keys:
        return "kep16"
    if any(k.startswith("visual.layers.") for k in keys):
        return "ctp"
    if "visual.pos_embed" in keys and "text.embeddings.word_embeddings.weight" in keys:
        return "keep"
    raise CheckpointError(
        "the checkpoint has no KEP/KEEP image tower (no visual.conv1, visual.trunk, visual.layers or visual.pos_embed)"
    )


def to_model_names(state: dict[str, torch.Tensor], variant: Variant) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Published names -> this implementation's names; returns (mapped, ignored keys).

    Ignored: the training-only knowledge BERT (`knowledge.*`), BERT's derived position ids, and
    for CTP the window masks / index tables that timm 0.5.4 stored.
    """
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, tensor in state.items():
        if key.startswith("knowledge.") or key.endswith(_DERIVED_BERT_BUFFERS):
            ignored.append(key)
            continue
        if variant == "ctp" and key.startswith("visual."):
            inner = ctp_key_from_published(key[len("visual.") :])
            if inner is None:
                ignored.append(key)
                continue
            key = "visual." + inner
        mapped[key] = tensor
    return mapped, ignored


def config_for(folder: Path, state: dict[str, torch.Tensor], variant: Variant | None) -> KEPConfig:
    detected = detect_variant(state.keys())
    if variant is not None and variant != detected:
        raise CheckpointError(f"{folder}: configured variant '{variant}' but the weights are a {detected} model")
    config_file = folder / CONFIG_NAME
    if config_file.is_file():
        try:
            config = KEPConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{config_file}: {exc}") from exc
        if config.variant != detected:
            raise CheckpointError(f"{config_file}: says variant '{config.variant}' but the weights are {detected}")
        return config
    words = state.get("text.bert_model.embeddings.word_embeddings.weight")
    if words is None:
        words = state.get("text.embeddings.word_embeddings.weight")
    vocab_size = int(words.shape[0]) if words is not None else 30522
    hf_config = folder / "config.json"
    if detected == "keep" and hf_config.is_file():
        return keep_config_from_hf(hf_config, vocab_size)
    return published_config(detected, vocab_size=vocab_size)


def keep_config_from_hf(path: Path, vocab_size: int = 30522) -> KEPConfig:
    """KEEP's HF `config.json`: the BERT comes from `text_config`, the joint width from `projection_dim`.

    The image tower is fixed in KEEP's code (timm ViT-L/16, 224 px), so `vision_config` is not read.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from exc
    if raw.get("model_type") != "keep":
        raise CheckpointError(f"{path}: model_type is {raw.get('model_type')!r}, not 'keep'")
    config = published_config("keep", vocab_size=vocab_size)
    text = raw.get("text_config") or {}
    fields = {k: text[k] for k in BertShape.__dataclass_fields__ if k in text}
    config.bert = BertShape(**{**{"vocab_size": vocab_size}, **fields})
    projection = int(raw.get("projection_dim", config.embed_dim))
    config.embed_dim = config.head_hidden = config.text_hidden = projection
    return config


def strict_load(model: KEP | KEEP, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict(strict=True), with a readable message naming the first mismatches."""
    missing, unexpected, wrong = checkpoints.mismatches(model.state_dict(), state)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not fit the KEP {model.config.variant} architecture: "
            + checkpoints.summary(missing, unexpected, wrong)
        )
    model.load_state_dict(state, strict=True)


def load_tokenizer(folder: Path, max_length: int = 256) -> Any:
    """The checkpoint folder's own tokenizer (KEP ships PubMedBERT's, lower-cased); never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer, BertTokenizerFast

    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder}: tokenizer files present but unreadable ({exc})") from exc
    elif (folder / "vocab.txt").is_file():
        # Not BertTokenizerFast(vocab_file=...): transformers 5 ignores that keyword and builds a 5-token
        # tokenizer that maps every word to [UNK], silently. from_pretrained reads vocab.txt in 4.x and 5.x.
        try:
            tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True, do_lower_case=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder}: vocab.txt present but unreadable ({exc})") from exc
        words = sum(1 for line in (folder / "vocab.txt").read_text(encoding="utf-8").splitlines() if line.strip())
        if len(tokenizer) != words:
            raise CheckpointError(
                f"{folder}: vocab.txt has {words} tokens but the tokenizer built from it {len(tokenizer)}"
            )
    else:
        raise CheckpointError(
            f"{folder}: no tokenizer (put PubMedBERT's vocab.txt or tokenizer.json beside the weights)"
        )
    tokenizer.model_max_length = max_length
    return tokenizer


def load_kep(path: Path, variant: Variant | None = None, device: str = "cpu") -> LoadedKEP:
    """Build the architecture the weights describe and load them strictly; eval mode on `device`."""
    weights = find_weights(Path(path))
    folder = weights.parent
    state = read_state_dict(weights)
    config = config_for(folder, state, variant)
    mapped, ignored = to_model_names(state, config.variant)
    tokenizer = load_tokenizer(folder, config.max_text_length)
    if len(tokenizer) > config.bert.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens but the text tower only "
            f"{config.bert.vocab_size}; the tokenizer does not belong to these weights"
        )
    model = build_model(config)
    strict_load(model, mapped, weights)
    model.eval().to(device)
    return LoadedKEP(model=model, tokenizer=tokenizer, config=config, weights=weights, ignored_keys=ignored)
