"""SAT's text encoder ("ours"): BioLORD-2023-C, masked mean pooling, an MLP, plus a modality embedding.

From MODELS_corrections.md (SAT items 1-3) and manifests/sat_text_encoder_state_dict.json:

- `text_tower.biolord` is an **MPNet** (FremyCompany/BioLORD-2023-C: vocab 30527, hidden 768, 12 layers, 12 heads,
  FFN 3072, 514 positions, 32 relative-attention buckets, layer-norm eps 1e-5), not a BERT. Its pooler is in the
  checkpoint but unused.
- The prompt embedding is the mean of the last hidden state over the attention mask, then `projection_layer`
  (Linear 768->768, GELU, Linear 768->768, no final activation), and then `modality_embed[m]` is **added after** the
  MLP (ct 0, mri 1, us 2, pet 3).
- Tokenisation is SAT's own: the tokenizer's word pieces wrapped in the literal tokens '[CLS]' ... '[SEP]' (not
  MPNet's <s> / </s>), ids zero-padded to the longest prompt, at most 256 (a cut prompt still ends in '[SEP]'), and
  attention_mask = id > 0. Prompts are lower-cased, as SAT's inference does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

MODALITY_CODES = {"ct": 0, "mri": 1, "us": 2, "pet": 3}


@dataclass
class TextConfig:
    """The text encoder's shape; the defaults are BioLORD-2023-C's published config.json."""

    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    relative_attention_num_buckets: int = 32
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    query_dim: int = 768  # the MLP's output = the segmenter's query width
    modalities: int = len(MODALITY_CODES)
    max_length: int = 256  # tokens per prompt, '[CLS]' and '[SEP]' included

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TextConfig:
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown SAT text-encoder config keys: {', '.join(unknown)}")
        return cls(**raw)

    def mpnet(self) -> Any:
        from transformers import MPNetConfig

        return MPNetConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            layer_norm_eps=self.layer_norm_eps,
            pad_token_id=self.pad_token_id,
            bos_token_id=0,
            eos_token_id=2,
            hidden_act="gelu",
        )


def biolord_config() -> TextConfig:
    return TextConfig()


def tiny_text_config(vocab_size: int = 64) -> TextConfig:
    return TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        relative_attention_num_buckets=32,  # transformers' MPNet computes the buckets for 32 whatever the config
        query_dim=32,
        max_length=32,
    )


class TextTower(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        from transformers import MPNetModel

        self.biolord = MPNetModel(config.mpnet(), add_pooling_layer=True)  # the pooler is loaded, never used

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden state over the valid tokens: (N, hidden)."""
        hidden = self.biolord(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class SATTextEncoder(nn.Module):
    """Token ids (N, L), mask (N, L), modality codes (N,) -> one query per prompt (N, query_dim)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.text_tower = TextTower(config)
        self.projection_layer = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.query_dim),
        )
        self.modality_embed = nn.Embedding(config.modalities, config.query_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        pooled = self.text_tower(input_ids, attention_mask)
        return self.projection_layer(pooled) + self.modality_embed(modality)


def build_text_encoder(config: TextConfig) -> SATTextEncoder:
    return SATTextEncoder(config)


def tokenize_prompts(tokenizer: Any, prompts: list[str], max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """SAT's tokenisation: (ids (N, L), attention_mask (N, L)); L is the longest prompt, at most `max_length`."""
    if not prompts:
        raise ValueError("no prompts to encode")
    rows = []
    for prompt in prompts:
        pieces = tokenizer.tokenize(prompt.lower())[: max_length - 2]
        rows.append(tokenizer.convert_tokens_to_ids(["[CLS]", *pieces, "[SEP]"]))
    length = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, ids > 0


def encode_prompts(
    encoder: SATTextEncoder, tokenizer: Any, prompts: list[str], modality: str
) -> torch.Tensor:  # fmt: skip
    """Queries (N, query_dim) for `prompts`, all of one modality ('ct', 'mri', 'us' or 'pet')."""
    if modality not in MODALITY_CODES:
        raise ValueError(f"modality must be one of {', '.join(MODALITY_CODES)}, not {modality!r}")
    device = encoder.modality_embed.weight.device
    ids, mask = tokenize_prompts(tokenizer, prompts, encoder.config.max_length)
    codes = torch.full((len(prompts),), MODALITY_CODES[modality], dtype=torch.long, device=device)
    return encoder(ids.to(device), mask.to(device).long(), codes)
