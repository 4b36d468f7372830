"""SAT (Zhao et al., npj Digital Medicine 2025): the text-prompted 3D segmentation network in one file.

Re-implemented from the facts in ../shared/MODELS.md section 7, its corrections (MODELS_corrections.md, SAT) and the
state-dict manifests derived from the authors' code (no code of the authors'):

- `backbone`: an nnU-Net-style plain conv U-Net, 6 stages, 3D 3x3x3 convs with bias -> affine InstanceNorm ->
  LeakyReLU, strides 1,2,2,2,2,2, 3 input channels (grey repeated 3x). SAT-Nano (`UNET`): widths 64-64-128-256-512-768,
  2 convs per stage; SAT-Pro (`UNET-L`): 128-128-256-512-1024-1536, 3 convs. The decoder upsamples with
  ConvTranspose3d (kernel = stride = 2), concatenates the skip and runs the same conv stack; no segmentation heads.
- `projection_layer`: every encoder stage's output average-pooled to the bottleneck grid (1/32), concatenated
  (1792 channels Nano, 3584 Pro), then Linear -> GELU -> Linear -> GELU to 768 (1792->768->768, 3584->1536->768).
- `transformer_decoder`: 6 pre-norm layers, 768 wide, 8 heads, **cross-attention only** (no self-attention among the
  queries): norm2 -> attention (key = image tokens + fixed 3D sinusoidal position code, value = image tokens, no query
  position) -> residual; norm3 -> FFN 768->2048->768 ReLU -> residual; dropout 0.1; a final LayerNorm. `norm1` exists
  in the checkpoint but is never run, so it is kept, unused.
- `mask_embed_proj`: the decoded queries through Linear -> GELU -> Linear -> GELU down to the per-voxel width
  (768->256->64 Nano, 768->384->128 Pro); the logits are the dot product with the full-resolution decoder features,
  one map per query: einsum('bchwd,bnc->bnhwd').
- `mid_mask_embed_proj` (training only, `deep_supervision=True`): the same heads for the decoder outputs at 1/2, 1/4,
  1/8 (Nano 768->256->64, 768->384->128, 768->512->256; Pro 768->384->128, 768->512->256, 768->512->512).

Each conv block stores its conv and norm once here (`.conv`, `.norm`); the published checkpoints hold every one of
them twice (also as `.all_modules.0` / `.all_modules.1`), which `load.py` folds. Tensors are (B, C, H, W, D): depth
last, as SAT orders them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SATConfig:
    """The segmentation network's shape; `nano_config()` / `pro_config()` are the published ones."""

    variant: str = "nano"  # a name only: "nano", "pro", "tiny", a fine-tune's own
    features: tuple[int, ...] = (64, 64, 128, 256, 512, 768)  # per U-Net stage; stage 0 is full resolution
    convs_per_stage: int = 2  # encoder and decoder alike
    in_channels: int = 3
    query_dim: int = 768  # text query width = transformer width (query_proj is the identity for UNET/UNET-L)
    projection_hidden: int = 768  # multi-scale MLP: sum(features) -> hidden -> query_dim
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    dropout: float = 0.1
    mask_hidden: int = 256  # query_dim -> mask_hidden -> features[0]
    deep_supervision: bool = False  # the three training-only heads (1/2, 1/4, 1/8)
    mid_mask_hidden: tuple[int, ...] = (256, 384, 512)  # their hidden widths; outputs are features[1], [2], [3]
    leaky_slope: float = 0.01  # [I] nnU-Net's default LeakyReLU; no weights depend on it
    norm_eps: float = 1e-5

    @property
    def stride(self) -> int:
        """Voxels per bottleneck cell along each axis (32 for 6 stages): inputs must be a multiple of it."""
        return 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> SATConfig:
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown SAT config keys: {', '.join(unknown)}")
        values = dict(raw)
        for name in ("features", "mid_mask_hidden"):
            if name in values:
                values[name] = tuple(values[name])
        config = cls(**values)
        if len(config.features) < 4 or len(config.mid_mask_hidden) != 3:
            raise ValueError("SAT needs at least 4 U-Net stages and 3 deep-supervision widths")
        return config


def nano_config(deep_supervision: bool = False) -> SATConfig:
    """SAT-Nano (`UNET`), the shapes of manifests/sat_nano_state_dict.json."""
    return SATConfig(variant="nano", deep_supervision=deep_supervision)


def pro_config(deep_supervision: bool = False) -> SATConfig:
    """SAT-Pro (`UNET-L`), the shapes of manifests/sat_pro_state_dict.json."""
    return SATConfig(
        variant="pro",
        features=(128, 128, 256, 512, 1024, 1536),
        convs_per_stage=3,
        projection_hidden=1536,
        mask_hidden=384,
        mid_mask_hidden=(384, 512, 512),
        deep_supervision=deep_supervision,
    )


def tiny_config(deep_supervision: bool = False) -> SATConfig:
    """The same architecture at toy widths (6 stages, so inputs are still multiples of 32), for tests."""
    return SATConfig(
        variant="tiny",
        features=(4, 4, 8, 8, 16, 16),
        convs_per_stage=2,
        query_dim=32,
        projection_hidden=24,
        decoder_layers=2,
        decoder_heads=4,
        decoder_ffn=48,
        mask_hidden=16,
        mid_mask_hidden=(16, 16, 16),
        deep_supervision=deep_supervision,
    )


class ConvNormAct(nn.Module):
    """conv -> InstanceNorm (affine, no running statistics) -> LeakyReLU."""

    def __init__(self, config: SATConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)
        self.norm = nn.InstanceNorm3d(out_channels, eps=config.norm_eps, affine=True)
        self.nonlin = nn.LeakyReLU(config.leaky_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.conv(x)))


class ConvStack(nn.Module):
    """`convs_per_stage` ConvNormAct blocks; the first carries the stage's stride."""

    def __init__(self, config: SATConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * config.convs_per_stage
        self.convs = nn.Sequential(
            *(ConvNormAct(config, widths[i], widths[i + 1], stride if i == 0 else 1) for i in range(len(widths) - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class Encoder(nn.Module):
    def __init__(self, config: SATConfig) -> None:
        super().__init__()
        widths = [config.in_channels, *config.features]
        # Each stage is a one-element Sequential: the checkpoint names it `stages.N.0.convs...`.
        self.stages = nn.ModuleList(
            nn.Sequential(ConvStack(config, widths[i], widths[i + 1], 1 if i == 0 else 2))
            for i in range(len(config.features))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output, full resolution first, the bottleneck (1/32) last."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class Decoder(nn.Module):
    def __init__(self, config: SATConfig) -> None:
        super().__init__()
        features = config.features
        levels = range(len(features) - 1, 0, -1)  # bottleneck -> full resolution
        # `stages` before `transpconvs`: the checkpoint lists them in this order.
        self.stages = nn.ModuleList(ConvStack(config, 2 * features[i - 1], features[i - 1], 1) for i in levels)
        self.transpconvs = nn.ModuleList(
            nn.ConvTranspose3d(features[i], features[i - 1], 2, stride=2, bias=True) for i in levels
        )

    def forward(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each decoder stage's output, coarsest (1/16) first, full resolution last."""
        x = skips[-1]
        outputs = []
        for k, (up, stage) in enumerate(zip(self.transpconvs, self.stages, strict=True)):
            # [I] upsampled features first, then the skip: nnU-Net's order; it decides which input weights see which.
            x = stage(torch.cat((up(x), skips[-(k + 2)]), dim=1))
            outputs.append(x)
        return outputs


class Backbone(nn.Module):
    def __init__(self, config: SATConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)


class CrossAttentionLayer(nn.Module):
    """Pre-norm: queries attend to the image tokens, then an FFN; no self-attention among the queries."""

    def __init__(self, config: SATConfig) -> None:
        super().__init__()
        width = config.query_dim
        self.multihead_attn = nn.MultiheadAttention(
            width, config.decoder_heads, dropout=config.dropout, batch_first=True
        )
        self.linear1 = nn.Linear(width, config.decoder_ffn)
        self.linear2 = nn.Linear(config.decoder_ffn, width)
        self.norm1 = nn.LayerNorm(width)  # in the checkpoint, never run (the self-attention it served is gone)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.dropout)  # inside the FFN
        self.dropout2 = nn.Dropout(config.dropout)  # after the attention
        self.dropout3 = nn.Dropout(config.dropout)  # after the FFN

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        attended = self.multihead_attn(self.norm2(queries), memory + position, memory, need_weights=False)[0]
        queries = queries + self.dropout2(attended)
        hidden = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(queries)))))
        return queries + self.dropout3(hidden)


class QueryDecoder(nn.Module):
    def __init__(self, config: SATConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(config) for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(config.query_dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, memory, position)
        return self.norm(queries)


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear -> GELU after every Linear, the last one included (indices 0, 2, ... hold the weights)."""
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers)


def position_encoding_3d(grid: tuple[int, int, int], channels: int, device=None) -> torch.Tensor:
    """The fixed sinusoidal code of a (h, w, d) grid, shape (h, w, d, channels); not a parameter.

    [I] As the `positional_encodings` package (6.0.x, SAT's pin) defines PositionalEncoding3D: each axis gets
    ceil(channels/6)*2 channels (h first, then w, then d), frequencies 1/10000^(2i/n), sine and cosine interleaved,
    the concatenation cut to `channels`. tests/sat compare it with that package when it is installed.
    """
    per_axis = math.ceil(channels / 6) * 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, per_axis, 2, device=device, dtype=torch.float32) / per_axis))

    def axis(length: int) -> torch.Tensor:
        angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (length, per_axis)

    h, w, d = grid
    code = torch.cat(
        (
            axis(h)[:, None, None, :].expand(h, w, d, per_axis),
            axis(w)[None, :, None, :].expand(h, w, d, per_axis),
            axis(d)[None, None, :, :].expand(h, w, d, per_axis),
        ),
        dim=-1,
    )
    return code[..., :channels]


class SATSegmenter(nn.Module):
    """Image (B, 3, H, W, D) + text queries (B, N, query_dim) -> mask logits (B, N, H, W, D), one map per query."""

    def __init__(self, config: SATConfig) -> None:
        super().__init__()
        self.config = config
        features = config.features
        self.backbone = Backbone(config)
        self.projection_layer = mlp((sum(features), config.projection_hidden, config.query_dim))
        self.transformer_decoder = QueryDecoder(config)
        if config.deep_supervision:
            self.mid_mask_embed_proj = nn.ModuleList(
                mlp((config.query_dim, hidden, width))
                for hidden, width in zip(config.mid_mask_hidden, features[1:4], strict=True)
            )
        self.mask_embed_proj = mlp((config.query_dim, config.mask_hidden, features[0]))

    def _check(self, image: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.dim() != 5:
            raise ValueError(f"SAT wants an image of shape (B, C, H, W, D), got {tuple(image.shape)}")
        if image.shape[1] == 1 and self.config.in_channels == 3:
            image = image.expand(-1, 3, -1, -1, -1)  # grey repeated to 3 channels, as SAT feeds it
        if image.shape[1] != self.config.in_channels:
            raise ValueError(f"SAT wants {self.config.in_channels} image channels (or 1), got {image.shape[1]}")
        stride = self.config.stride
        if any(size % stride for size in image.shape[2:]):
            raise ValueError(
                f"every side of the image must be a multiple of {stride} voxels, got {tuple(image.shape[2:])}"
            )
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(image.shape[0], -1, -1)
        if queries.dim() != 3 or queries.shape[-1] != self.config.query_dim or queries.shape[0] != image.shape[0]:
            raise ValueError(
                f"SAT wants queries of shape (B, N, {self.config.query_dim}) or (N, {self.config.query_dim}) for "
                f"images of batch {image.shape[0]}, got {tuple(queries.shape)}"
            )
        return image, queries

    def _decode(self, image: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(decoded queries (B, N, query_dim), decoder feature maps coarsest first)."""
        image, queries = self._check(image, queries)
        skips = self.backbone.encoder(image)
        grid = skips[-1].shape[2:]
        pooled = torch.cat([F.adaptive_avg_pool3d(s, grid) for s in skips], dim=1)  # (B, sum(features), h, w, d)
        memory = self.projection_layer(pooled.flatten(2).transpose(1, 2))  # (B, h*w*d, query_dim)
        position = position_encoding_3d(tuple(grid), self.config.query_dim, device=image.device)
        position = position.reshape(1, -1, self.config.query_dim).to(memory.dtype)
        decoded = self.transformer_decoder(queries.to(memory.dtype), memory, position)
        return decoded, self.backbone.decoder(skips)

    def forward(self, image: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        decoded, maps = self._decode(image, queries)
        return torch.einsum("bchwd,bnc->bnhwd", maps[-1], self.mask_embed_proj(decoded))

    def deep_supervision_logits(self, image: torch.Tensor, queries: torch.Tensor) -> list[torch.Tensor]:
        """Logits at full resolution, 1/2, 1/4 and 1/8 (training with deep supervision only)."""
        if not self.config.deep_supervision:
            raise ValueError("this SAT model was built without the deep-supervision heads (deep_supervision=False)")
        decoded, maps = self._decode(image, queries)
        heads = [self.mask_embed_proj, *self.mid_mask_embed_proj]
        return [
            torch.einsum("bchwd,bnc->bnhwd", feature, head(decoded))
            for feature, head in zip(maps[::-1], heads, strict=False)
        ]


def build_segmenter(config: SATConfig) -> SATSegmenter:
    return SATSegmenter(config)


def state_dict_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}
