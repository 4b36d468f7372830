"""MedVInT-TD (PMC-VQA) in one file: PMC-CLIP's ResNet trunk, 32 learned queries through a transformer decoder, an
MLP into LLaMA's embedding space, and the LoRA-wrapped LLaMA that reads those 32 embeddings before the prompt.

Written from the facts in ../shared/MODELS.md section 5 and the authors' training/test scripts
(github.com/xiaoman-zhang/PMC-VQA, src/MedVInT_TD). Parameter names follow the HF-Trainer `pytorch_model.bin`
(a flat state_dict of the authors' `QA_model`) so that a strict load succeeds:

- `vision_model.*`: PMC-CLIP's ModifiedResNet-50 (layers 3-4-6-3, width 64) with its last 2 children removed,
  kept as an nn.Sequential over the remaining children. open_clip's ModifiedResNet registers its children in
  this order (PMC-CLIP's own copy of the class registers the same modules in the same order, its ReLUs named
  relu1..3 instead of act1..3, which hold no parameters):

      0 conv1  1 bn1  2 act1  3 conv2  4 bn2  5 act2  6 conv3  7 bn3  8 act3  9 avgpool
      10 layer1  11 layer2  12 layer3  | dropped: 13 layer4, 14 attnpool

  so the keys are `vision_model.0.weight` (conv1), `vision_model.1.{weight,bias,running_mean,running_var,
  num_batches_tracked}` (bn1), `vision_model.3.weight`, `.4.*`, `.6.weight`, `.7.*`, and the bottleneck stages
  `vision_model.10.N.*`, `.11.N.*`, `.12.N.*` (`conv1..3`, `bn1..3`, `downsample.0/1`). The trunk ends after
  layer3: width x 16 = 1024 channels at stride 16 (2 stem conv stride, 2 avgpool, 2 each for layer2 and layer3),
  so a 512 x 512 image gives a 32 x 32 grid of 1024-d patch features.
- `query_embed.weight`: 32 learned queries (nn.Embedding(32, 1024)).
- `decoder.*`: a 12-layer transformer decoder, 8 heads, FFN 1024, ReLU, dropout 0.1, pre-norm, and a final
  LayerNorm. The queries are the decoder's target and the patch features its memory, with no positional
  encoding on either (the authors pass pos=None, query_pos=None). Built here from torch.nn.TransformerDecoder
  (`norm_first=True`), whose names are
  `decoder.layers.N.self_attn.{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}`,
  `decoder.layers.N.multihead_attn.{same}`, `decoder.layers.N.linear1.*`, `decoder.layers.N.linear2.*`,
  `decoder.layers.N.norm1/2/3.*` and `decoder.norm.*`. The authors' decoder is a DETR-style module with these
  attribute names [I]: LAYOUT FROM THE AUTHORS' CODE, NOT YET CHECKED AGAINST RELEASED WEIGHTS.
- `fc_l1` (1024 -> 1024), ReLU, `fc_l2` (1024 -> LLaMA hidden, 4096 for LLaMA-7B): the 32 visual embeddings.
- `llamacasual.*`: a transformers LlamaForCausalLM wrapped by PEFT LoRA (r 8, alpha 32, dropout 0.1, CAUSAL_LM;
  PEFT's LLaMA default targets q_proj and v_proj, which the authors relied on), so its keys are
  `llamacasual.base_model.model.model.*` and `llamacasual.base_model.model.lm_head.weight`. How the LoRA
  layers are named depends on the PEFT version (see load.py).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# LLaMA-7B (and PMC-LLaMA-7B, fine-tuned from it) as HF's converted config.json describes it.
LLAMA_7B: dict[str, Any] = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# The LoRA layers the authors' PEFT call produced (its default for LLaMA; their key-rename hint lists only these).
LORA_TARGETS = ("q_proj", "v_proj")


@dataclass
class MedVInTConfig:
    """Everything needed to build MedVInT-TD; saved as `medvint_config.json` beside tiny or retrained weights."""

    image_size: int = 512
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # layer4's count only shapes the dropped stage
    vision_width: int = 64
    query_tokens: int = 32
    decoder_layers: int = 12
    decoder_heads: int = 8
    decoder_feedforward: int = 1024
    dropout: float = 0.1
    llama: dict[str, Any] = field(default_factory=lambda: dict(LLAMA_7B))
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1

    @property
    def feature_dim(self) -> int:
        """Channels out of layer3 (bottleneck expansion 4 x width x 4): 1024 for the published width 64."""
        return self.vision_width * 16

    @property
    def hidden_size(self) -> int:
        return int(self.llama["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.llama["vocab_size"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MedVInTConfig:
        raw = dict(raw)
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        if "vision_layers" in raw:
            raw["vision_layers"] = tuple(raw["vision_layers"])
        if "llama" in raw:
            raw["llama"] = dict(raw["llama"])
        return cls(**raw)


def vision_trunk(cfg: MedVInTConfig) -> nn.Sequential:
    """open_clip's ModifiedResNet without its last two children (layer4, attnpool), as an nn.Sequential.

    Built as the authors build it: the full ResNet of PMC-CLIP's RN50 config (attention pool for 224 px, output
    768, one head per 64 channels), then children[:-2]; the dropped parts hold no weights of the checkpoint.
    """
    from open_clip.modified_resnet import ModifiedResNet

    resnet = ModifiedResNet(
        layers=list(cfg.vision_layers),
        output_dim=768,
        heads=cfg.vision_width * 32 // 64,
        image_size=224,
        width=cfg.vision_width,
    )
    return nn.Sequential(*list(resnet.children())[:-2])


def lora_config(cfg: MedVInTConfig) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(LORA_TARGETS),
        inference_mode=True,
    )


class MedVInT(nn.Module):
    """Image -> 32 visual embeddings in LLaMA's input space, prepended to the prompt's token embeddings."""

    def __init__(self, cfg: MedVInTConfig) -> None:
        super().__init__()
        from peft import get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM

        if cfg.image_size % 16:
            raise ValueError(f"MedVInT's trunk downsamples by 16: image_size {cfg.image_size} must be a multiple of 16")
        if cfg.feature_dim % cfg.decoder_heads:
            raise ValueError(f"{cfg.decoder_heads} decoder heads do not divide the {cfg.feature_dim}-d features")
        self.config = cfg
        d = cfg.feature_dim
        self.vision_model = vision_trunk(cfg)
        self.query_embed = nn.Embedding(cfg.query_tokens, d)
        layer = nn.TransformerDecoderLayer(
            d, cfg.decoder_heads, cfg.decoder_feedforward, cfg.dropout, activation="relu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers, norm=nn.LayerNorm(d))
        self.fc_l1 = nn.Linear(d, d)
        self.fc_l2 = nn.Linear(d, cfg.hidden_size)
        llama = LlamaForCausalLM(LlamaConfig(**cfg.llama))
        with warnings.catch_warnings():  # PEFT asks transformers 5 a deprecated question (is_gradient_checkpointing)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            # The attribute name (sic) is the checkpoint's: keys start `llamacasual.base_model.model.`.
            self.llamacasual = get_peft_model(llama, lora_config(cfg))

    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, feature_dim, S/16, S/16)."""
        return self.vision_model(pixels.to(self.query_embed.weight.dtype))

    def visual_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, query_tokens, LLaMA hidden): queries read the patch grid, then the MLP."""
        grid = self.patch_features(pixels)
        memory = grid.flatten(2).transpose(1, 2)  # (B, patches, d), patches in row-major order
        queries = self.query_embed.weight.unsqueeze(0).expand(grid.shape[0], -1, -1)
        features = self.decoder(queries, memory)
        return self.fc_l2(F.relu(self.fc_l1(features)))

    def input_embeddings(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The 32 visual embeddings first, then the prompt's token embeddings (bos included in input_ids)."""
        text = self.llamacasual.get_input_embeddings()(input_ids)
        return torch.cat([self.visual_embeddings(pixels).to(text.dtype), text], dim=1)

    def forward(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (B, query_tokens + L, vocab) over the visual and prompt positions (the authors' `generate`)."""
        return self.llamacasual(inputs_embeds=self.input_embeddings(input_ids, pixels)).logits


def state_dict_shapes(model: MedVInT) -> dict[str, list[int]]:
    """Parameter and persistent-buffer names and shapes (works on the meta device)."""
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
