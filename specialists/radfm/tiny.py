"""A toy-sized RadFM (same classes, random weights) and a small word-level tokenizer, for tests and smoke runs.

No LLaMA tokenizer ships with the project, so the tiny model gets a word-level tokenizer trained on a few sentences,
with LLaMA's first three ids (<unk>=0, <s>=1, </s>=2) so the forced pad/bos/eos ids mean the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medagent.specialists.radfm.load import save_checkpoint
from medagent.specialists.radfm.model import DecoderConfig, PerceiverConfig, RadFM, RadFMConfig, VisionConfig


def tiny_llama(vocab_size: int) -> dict[str, Any]:
    """The tiny LLaMA decoder config that RadFM's and MedVInT's tiny models share."""
    return {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def tiny_config(vocab_size: int) -> RadFMConfig:
    return RadFMConfig(
        llama=tiny_llama(vocab_size),
        bert={
            "vocab_size": 64,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 32,
            "type_vocab_size": 2,
        },
        vision=VisionConfig(
            image_size=64,
            frames=16,
            patch_size=16,
            frame_patch_size=4,
            dim=48,
            depth=1,
            heads=2,
            dim_head=16,
            mlp_dim=64,
        ),
        perceiver=PerceiverConfig(depth=1, heads=2, dim_head=16, num_latents=4, ff_mult=2),
        decoder=DecoderConfig(layers=1, heads=2, feedforward=64),
        max_images=4,
    )


def word_tokenizer(sentences: list[str]) -> Any:
    """A lower-casing word-level fast tokenizer over the words of `sentences`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"], min_frequency=1)
    tokenizer.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )


def build_tiny(folder: Path, sentences: list[str], seed: int = 0) -> Path:
    """Random-weight tiny RadFM + tokenizer saved in the published layout under `folder`."""
    tokenizer = word_tokenizer(sentences)
    torch.manual_seed(seed)
    model = RadFM(tiny_config(len(tokenizer)))
    return save_checkpoint(model, tokenizer, folder)
