"""PMC-CLIP (MICCAI 2023) in one file: the modified ResNet-50 image tower, the PubMedBERT text tower, the joint model.

Written from the facts in ../shared/MODELS.md section 4 (config `RN50_fusion4`); parameter names follow the
open_clip-style `checkpoint.pt` so that a strict load succeeds:

- `visual.*`: open_clip's own `ModifiedResNet` (layers 3-4-6-3, width 64, attention pooling to embed_dim 768)
  at 224 px (`conv1..3`, `bn1..3`, `layer1..4`, `attnpool.{positional_embedding,q_proj,k_proj,v_proj,c_proj}`).
- `text_encoder.*`: a transformers BertModel (PubMedBERT-base, vocab 30522); the text feature is the last
  hidden state at the [CLS] position (token id 2 in PubMedBERT's vocabulary) times `text_projection` (768x768).
- `logit_scale`: 0-d, log of 1/temperature; zero-shot logits are cosine x logit_scale.exp().
- Kept for key compatibility only (no medagent tool runs them): the 4-layer transformer `fusion_module.*`
  (open_clip's Transformer), `img_special_token`, `positional_embedding`, `ln_final.*` and the MLM head
  `mlm_projection` (768x30522). MODELS.md names these keys but gives no shapes beyond `mlm_projection`'s, so
  their shapes here ([I]: fusion width = BERT width, 12 heads, positional table of the 77-token context) are
  inference, not yet checked against the released weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BertShape:
    """The text tower's size; the published one is PubMedBERT-base (uncased, abstract + full text)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2


@dataclass
class PMCCLIPConfig:
    """Everything needed to build PMC-CLIP; saved as `pmcclip_config.json` beside tiny or retrained weights."""

    embed_dim: int = 768
    image_size: int = 224
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    vision_width: int = 64
    bert: BertShape = field(default_factory=BertShape)
    context_length: int = 77
    fusion_layers: int = 4
    fusion_heads: int = 12
    cls_token_id: int = 2  # [CLS] in PubMedBERT's vocab.txt
    temperature: float = 0.07

    @property
    def vision_heads(self) -> int:
        """open_clip's rule for the attention pool: one head per 64 channels of the 32x-wide last stage."""
        return self.vision_width * 32 // 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PMCCLIPConfig:
        raw = dict(raw)
        bert = BertShape(**raw.pop("bert", {}))
        if "vision_layers" in raw:
            raw["vision_layers"] = tuple(raw["vision_layers"])
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"pmcclip_config.json: unknown fields {sorted(unknown)}")
        return cls(bert=bert, **raw)


def published_config(vocab_size: int = 30522) -> PMCCLIPConfig:
    """The released `RN50_fusion4` checkpoint's configuration."""
    return PMCCLIPConfig(bert=BertShape(vocab_size=vocab_size))


class PMCCLIP(nn.Module):
    """Image tower, text tower + projection, learned temperature; the fusion/MLM parameters ride along unused."""

    def __init__(self, cfg: PMCCLIPConfig) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import Transformer
        from transformers import BertConfig, BertModel

        if cfg.image_size % 32:
            raise ValueError(f"PMC-CLIP's ResNet downsamples by 32: image_size {cfg.image_size} must be a multiple of 32")
        self.config = cfg
        width = cfg.bert.hidden_size
        self.visual = ModifiedResNet(
            layers=list(cfg.vision_layers),
            output_dim=cfg.embed_dim,
            heads=cfg.vision_heads,
            image_size=cfg.image_size,
            width=cfg.vision_width,
        )
        self.text_encoder = BertModel(BertConfig(**asdict(cfg.bert)), add_pooling_layer=True)
        self.text_projection = nn.Parameter(torch.empty(width, cfg.embed_dim))
        nn.init.normal_(self.text_projection, std=width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
        # Kept so that the released checkpoint loads strictly; see the module docstring.
        self.fusion_module = Transformer(width=width, layers=cfg.fusion_layers, heads=cfg.fusion_heads)
        self.img_special_token = nn.Parameter(torch.zeros(1, 1, width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.ln_final = nn.LayerNorm(width)
        self.mlm_projection = nn.Parameter(torch.empty(width, cfg.bert.vocab_size))
        nn.init.normal_(self.mlm_projection, std=width**-0.5)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Un-normalised embed_dim image features of Bx3xSxS pixels."""
        return self.visual(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Un-normalised embed_dim text features: BERT's last hidden state at each row's [CLS], projected."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        at_cls = (input_ids == self.config.cls_token_id).int().argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), at_cls] @ self.text_projection

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features and the logit scale, as CLIP training uses them."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        return image, text, self.logit_scale.exp()


def state_dict_shapes(model: PMCCLIP) -> dict[str, list[int]]:
    """Parameter and persistent-buffer names and shapes (works on the meta device)."""
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
