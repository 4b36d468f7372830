"""RadFM's architecture in one file: LLaMA language model + 3D ViT + perceiver resampler + image-token embedding.

Re-implemented from the published facts (shared MODELS.md, section 1). Module and parameter names follow the
published `pytorch_model.bin` (`lang_model.*`, `embedding_layer.*`) so that a strict load succeeds. The Med-KEBERT,
transformer decoder, MLP, `cls_head` and `output_upscaling` modules are never used in a forward pass; they exist
only because the checkpoint holds their weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# LLaMA-13B as RadFM's bundled Language_files/config.json describes it; pad/bos/eos are forced to 0/1/2 because
# that config still carries the decapoda-style ids.
LLAMA_13B: dict[str, Any] = {
    "hidden_size": 5120,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "intermediate_size": 13824,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# Med-KEBERT (bert-base). Written here so nothing is downloaded: the checkpoint carries its weights.
MED_KEBERT: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


@dataclass
class VisionConfig:
    image_size: int = 512
    frames: int = 512
    patch_size: int = 32
    frame_patch_size: int = 4
    channels: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 2048
    dropout: float = 0.1


@dataclass
class PerceiverConfig:
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 32
    ff_mult: int = 4


@dataclass
class DecoderConfig:
    """The unused keyword-matching decoder (d_model is the vision dim)."""

    layers: int = 4
    heads: int = 8
    feedforward: int = 2048


@dataclass
class RadFMConfig:
    llama: dict[str, Any] = field(default_factory=lambda: dict(LLAMA_13B))
    bert: dict[str, Any] = field(default_factory=lambda: dict(MED_KEBERT))
    vision: VisionConfig = field(default_factory=VisionConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    max_images: int = 100  # the tokenizer holds <image0> ... <image{max_images*num_latents-1}>

    @property
    def vocab_size(self) -> int:
        return int(self.llama["vocab_size"])

    @property
    def image_token_count(self) -> int:
        return self.max_images * self.perceiver.num_latents

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RadFMConfig:
        return cls(
            llama=dict(raw.get("llama", LLAMA_13B)),
            bert=dict(raw.get("bert", MED_KEBERT)),
            vision=VisionConfig(**raw.get("vision", {})),
            perceiver=PerceiverConfig(**raw.get("perceiver", {})),
            decoder=DecoderConfig(**raw.get("decoder", {})),
            max_images=int(raw.get("max_images", 100)),
        )


# ---------------------------------------------------------------- 3D vision transformer


class PatchRearrange(nn.Module):
    """(N, C, H, W, D) -> (N, h*w*f, p*p*pf*C): patches in (row, col, depth) order, each flattened as (p1 p2 pf c).

    The published model has a parameter-free rearrange at index 0 of `to_patch_embedding`; the flattening order
    must match it for the LayerNorm(12288)/Linear weights to mean what they were trained for.
    """

    def __init__(self, patch_size: int, frame_patch_size: int) -> None:
        super().__init__()
        self.p, self.pf = patch_size, frame_patch_size

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        n, c, height, width, depth = video.shape
        p, pf = self.p, self.pf
        h, w, f = height // p, width // p, depth // pf
        x = video.reshape(n, c, h, p, w, p, f, pf).permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(n, h * w * f, p * p * pf * c)


class PositionEmbeddingLearned3d(nn.Module):
    """Learned row/column/depth tables, concatenated; an input with n < slots patches along an axis reads rows
    (i + 1) * (slots // n) - 1, i = 0..n-1: the last row of each stride, as RadFM's code (a 2D image, one depth
    patch, reads the last depth row, not the first)."""

    def __init__(self, dim: int, rows: int, cols: int, depths: int) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(rows, dim // 3)
        self.col_embed = nn.Embedding(cols, dim // 3)
        self.dep_embed = nn.Embedding(depths, dim // 3)

    @staticmethod
    def indices(n: int, slots: int, device: torch.device | None = None) -> torch.Tensor:
        return (torch.arange(n, device=device) + 1) * (slots // n) - 1

    def forward(self, h: int, w: int, d: int) -> torch.Tensor:
        device = self.row_embed.weight.device
        tables = (self.row_embed, self.col_embed, self.dep_embed)
        for n, table, what in zip((h, w, d), tables, ("rows", "columns", "depth"), strict=True):
            if n > table.num_embeddings:
                raise ValueError(f"image has {n} patch {what}, the model holds at most {table.num_embeddings}")
        rows, cols, deps = (
            table(self.indices(n, table.num_embeddings, device)) for n, table in zip((h, w, d), tables, strict=True)
        )
        grid = torch.cat(
            [
                rows[:, None, None, :].expand(h, w, d, -1),
                cols[None, :, None, :].expand(h, w, d, -1),
                deps[None, None, :, :].expand(h, w, d, -1),
            ],
            dim=-1,
        )
        return grid.reshape(h * w * d, -1)  # (h w d) order, as the patches


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, _ = x.shape
        q, k, v = (t.reshape(n, tokens, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(n, tokens, -1))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                    PreNorm(dim, FeedForward(dim, mlp_dim, dropout)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feedforward in self.layers:
            x = attention(x) + x
            x = feedforward(x) + x
        return x


class ViT3D(nn.Module):
    """3D ViT: 32x32x4 patches of a (3, H, W, D) scan -> one 768-d token per patch."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.channels * cfg.patch_size * cfg.patch_size * cfg.frame_patch_size
        self.to_patch_embedding = nn.Sequential(
            PatchRearrange(cfg.patch_size, cfg.frame_patch_size),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, cfg.dim),
            nn.LayerNorm(cfg.dim),
        )
        grid = cfg.image_size // cfg.patch_size
        self.pos_embedding = PositionEmbeddingLearned3d(cfg.dim, grid, grid, cfg.frames // cfg.frame_patch_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim, cfg.dropout)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        _, _, height, width, depth = video.shape
        p, pf = self.cfg.patch_size, self.cfg.frame_patch_size
        if height % p or width % p or depth % pf:
            raise ValueError(f"scan of {height}x{width}x{depth} is not a multiple of the {p}x{p}x{pf} patch")
        x = self.to_patch_embedding(video)
        x = x + self.pos_embedding(height // p, width // p, depth // pf).to(x.dtype)
        return self.transformer(self.dropout(x))


# ---------------------------------------------------------------- perceiver resampler


class PerceiverAttention(nn.Module):
    """Latents attend to [media tokens; latents] (flamingo-style)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # media (B, S, v, d), latents (B, S, n, d)
        media, latents = self.norm_media(media), self.norm_latents(latents)
        b, s, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=2)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, t.shape[2], self.heads, -1).transpose(2, 3)  # (B, S, heads, tokens, dh)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return self.to_out(out.transpose(2, 3).reshape(b, s, n, -1))


class PerceiverResampler(nn.Module):
    """Any number of patch tokens per image -> `num_latents` tokens per image."""

    def __init__(self, dim: int, cfg: PerceiverConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, cfg.heads, cfg.dim_head),
                    nn.Sequential(
                        nn.LayerNorm(dim),
                        nn.Linear(dim, dim * cfg.ff_mult, bias=False),
                        nn.GELU(),
                        nn.Linear(dim * cfg.ff_mult, dim, bias=False),
                    ),
                ]
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        b, s = media.shape[:2]
        latents = self.latents.to(media.dtype).expand(b, s, -1, -1)
        for attention, feedforward in self.layers:
            latents = attention(media, latents) + latents
            latents = feedforward(latents) + latents
        return self.norm(latents)


# ---------------------------------------------------------------- embedding layer


class RadFMEmbedding(nn.Module):
    """Token ids -> embeddings, where ids past the text vocabulary address `<image>`, `</image>` and visual tokens.

    The lookup table of one sample is [text embeddings (V); figure_token_weight (2); its S*32 visual tokens], so id
    V is `<image>`, V+1 is `</image>` and V+2+k is the k-th visual token in the order the images are stacked.
    """

    def __init__(self, config: RadFMConfig) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        hidden = int(config.llama["hidden_size"])
        vdim = config.vision.dim
        self.vocab_size = config.vocab_size
        self.num_latents = config.perceiver.num_latents
        self.weight = nn.Parameter(torch.randn(config.vocab_size, hidden))  # replaced by the LLM's embed_tokens
        self.figure_token_weight = nn.Parameter(torch.randn(2, hidden))
        # Unused at inference (keyword-matching loss / segmentation head of the original training code).
        self.bert_model = BertModel(BertConfig(**config.bert))
        bert_hidden = int(config.bert["hidden_size"])
        self.bert_projection_fc = nn.Linear(bert_hidden, vdim)
        self.vision_encoder = ViT3D(config.vision)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(vdim, vdim // 4, kernel_size=2, stride=2),
            nn.BatchNorm3d(vdim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(vdim // 4, vdim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        decoder_layer = nn.TransformerDecoderLayer(
            vdim, config.decoder.heads, config.decoder.feedforward, batch_first=True, norm_first=True
        )
        self.transformer_decoder = nn.TransformerDecoder(decoder_layer, config.decoder.layers, norm=nn.LayerNorm(vdim))
        self.transformer_decoder_mlp = nn.Sequential(
            nn.Linear(vdim, vdim // 4), nn.GELU(), nn.Linear(vdim // 4, vdim // 8), nn.GELU()
        )
        self.perceiver = PerceiverResampler(vdim, config.perceiver)
        self.fc = nn.Linear(vdim, hidden)
        self.cls_head = nn.Linear(vdim // 8, 1)

    def visual_tokens(self, vision_x: torch.Tensor) -> torch.Tensor:
        """(B, S, 3, H, W, D) scans -> (B, S*num_latents, hidden) tokens for the language model."""
        if vision_x.ndim != 6:
            raise ValueError(f"vision_x must be (batch, images, 3, H, W, D), got shape {tuple(vision_x.shape)}")
        b, s = vision_x.shape[:2]
        patches = self.vision_encoder(vision_x.flatten(0, 1))  # (B*S, v, dim)
        latents = self.perceiver(patches.reshape(b, s, patches.shape[1], -1))  # (B, S, n, dim)
        return self.fc(latents).reshape(b, s * self.num_latents, -1)

    def forward(self, lang_x: torch.Tensor, vision_x: torch.Tensor | None) -> torch.Tensor:
        b = lang_x.shape[0]
        table = torch.cat([self.weight, self.figure_token_weight.to(self.weight.dtype)], dim=0)
        table = table.unsqueeze(0).expand(b, -1, -1)
        if vision_x is not None:
            visual = self.visual_tokens(vision_x.to(self.weight.dtype))
            table = torch.cat([table, visual.to(table.dtype)], dim=1)
        highest = int(lang_x.max())
        if highest >= table.shape[1]:
            images = 0 if vision_x is None else vision_x.shape[1]
            raise ValueError(
                f"prompt uses image token {highest - self.vocab_size - 2} but only {images} image(s) were given "
                f"({images * self.num_latents} visual tokens)"
            )
        # Same result as the published one-hot matmul, without a (L x table) one-hot matrix.
        rows = torch.arange(b, device=lang_x.device)[:, None]
        return table[rows, lang_x]


# ---------------------------------------------------------------- the whole model


@dataclass
class RadFMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None


class RadFM(nn.Module):
    """`MultiLLaMAForCausalLM`: the embedding layer feeds `inputs_embeds` to a LLaMA causal LM."""

    def __init__(self, config: RadFMConfig) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = config
        self.lang_model = LlamaForCausalLM(LlamaConfig(**config.llama))
        self.embedding_layer = RadFMEmbedding(config)
        self.tie_embeddings()

    def tie_embeddings(self) -> None:
        """The embedding layer's text table IS the LLM's embed_tokens (one tensor, two state_dict keys)."""
        self.embedding_layer.weight = self.lang_model.get_input_embeddings().weight

    def forward(
        self,
        lang_x: torch.Tensor,
        vision_x: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_weight: torch.Tensor | None = None,
    ) -> RadFMOutput:
        embeds = self.embedding_layer(lang_x, vision_x)
        logits = self.lang_model(inputs_embeds=embeds, attention_mask=attention_mask).logits
        loss = None
        if labels is not None:
            # Next-token cross-entropy; -100 masks prompt/pad; optional per-token weights (RadFM up-weights
            # medical keywords this way).
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, 1:]
            per_token = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="none",
            ).reshape(shift_labels.shape)
            mask = (shift_labels != -100).float()
            if loss_weight is not None:
                mask = mask * loss_weight[:, 1:].float()
            loss = (per_token * mask).sum() / mask.sum().clamp(min=1e-8)
        return RadFMOutput(logits=logits, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        lang_x: torch.Tensor,
        vision_x: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 200,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Greedy by default; returns only the new token ids (B, T)."""
        embeds = self.embedding_layer(lang_x, vision_x)
        if attention_mask is None:
            attention_mask = torch.ones(lang_x.shape, dtype=torch.long, device=lang_x.device)
        options = {"do_sample": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2} | kwargs
        return self.lang_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **options
        )
