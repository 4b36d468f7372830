"""A toy-sized MedVInT-TD (same classes, random weights) and a small word-level tokenizer, for tests and smoke runs.

Tiny ResNet widths, a 2-layer query decoder (the real one has 12), a 2-layer LLaMA; the real 512 x 512 input, 32
queries, LoRA r 8 on q_proj/v_proj. The tokenizer is RadFM's tiny word-level one (LLaMA's ids 0/1/2 for
<unk>/<s>/</s>). LoRA's B matrices start at zero in PEFT, which would make the adapters invisible; here they are
drawn at random so that a LoRA key that fails to load changes the answers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medagent.specialists.medvint.load import save_checkpoint
from medagent.specialists.medvint.model import MedVInT, MedVInTConfig
from medagent.specialists.radfm.tiny import tiny_llama, word_tokenizer

# The prompt's own words and the choice letters, so every tiny tokenizer knows them.
PROMPT_WORDS = "question : choices the answer is : a : b : c : d : e : f : g : h :"


def tiny_config(vocab_size: int) -> MedVInTConfig:
    return MedVInTConfig(
        image_size=512,
        vision_layers=(1, 1, 1, 1),
        vision_width=8,  # 128-d features out of layer3
        decoder_layers=2,
        decoder_heads=8,
        decoder_feedforward=64,
        llama=tiny_llama(vocab_size),
    )


def tiny_model(vocab_size: int, seed: int = 0) -> MedVInT:
    torch.manual_seed(seed)
    model = MedVInT(tiny_config(vocab_size))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(std=0.2)
    return model.eval()


def build_tiny(
    folder: Path, sentences: list[str], seed: int = 0, peft_naming: str = "released", base_folder: Path | None = None
) -> Path:
    """Random-weight tiny MedVInT-TD + tokenizer saved in the released layout under `folder` (the LLaMA base in
    `base_folder` as an HF folder instead, when given)."""
    tokenizer = word_tokenizer([PROMPT_WORDS, *sentences])
    model = tiny_model(len(tokenizer), seed)
    return save_checkpoint(model, tokenizer, folder, peft_naming=peft_naming, base_folder=base_folder)
