"""RadDiag (RP3D-Diag, Nature Communications 2024): the whole architecture in one file.

Re-implemented from the facts in ../shared/MODELS.md section 8 and its corrections (no code of the authors'):

- every slice of a scan goes through a 2D ResNet-50 (grey repeated to 3 channels, no mean/std) -> 2048-d;
- `attention1D`: a 1-layer, 1-head pre-norm transformer over [CLS] + the slices, with a learned position
  embedding (max depth 32) and a key mask of the valid slices; the scan vector is the CLS output;
- early fusion (`vitFuse`): a 2-layer, 4-head transformer over [CLS] + up to 4 scan vectors, each plus its
  modality embedding (id 0 = empty slot, masked out), no position embedding; late fusion: no fusion, each
  scan gets its own logits;
- `fc`: Linear 2048->2048, GELU, Linear 2048->5569 multi-label logits (apply a sigmoid per column).

The transformer blocks keep the authors' layout so a published `pytorch_model.bin` loads by name: the norm
is their own LayerNorm (`a`, `b`; unbiased std, eps added to the std), attention `linears.0..3` = q, k, v,
out, and each `TransformerEncoder` holds template modules (`multi_headed_attention`, `feed_forward`,
`encoder_layer`) beside the deep-copied `encoder.layers.N`. The templates are never run; their tensors are
in the checkpoint (the attention / feed-forward ones under two names, shared), so they are kept here too.

The ResNet is timm's `ResNet` with Bottleneck blocks: at (3, 4, 6, 3) and widths 64..512 it is torchvision's
ResNet-50 (the authors' backbone) with the same parameter names; the tiny test config only narrows it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

Fusion = Literal["early", "late"]
NUM_DISORDERS = 5569


@dataclass
class RadDiagConfig:
    fusion: Fusion = "early"
    num_classes: int = NUM_DISORDERS
    resnet_layers: tuple[int, ...] = (3, 4, 6, 3)
    resnet_channels: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 64
    image_size: int = 256  # in-plane size the preprocessing resizes to
    max_depth: int = 32  # slices per scan
    max_scans: int = 4  # scans per case (early fusion)
    num_modalities: int = 16  # modality ids 0..15, 0 = empty slot
    slice_layers: int = 1
    slice_heads: int = 1
    fuse_layers: int = 2
    fuse_heads: int = 4
    dropout: float = 0.1  # [I] not in the facts; dropout has no weights and is off at inference
    extra: dict = field(default_factory=dict)

    @property
    def hidden(self) -> int:
        return self.resnet_channels[-1] * 4  # Bottleneck expansion: 2048 for ResNet-50

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> RadDiagConfig:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown RadDiag config keys: {', '.join(unknown)}")
        for name in ("resnet_layers", "resnet_channels"):
            if name in known:
                known[name] = tuple(known[name])
        config = cls(**known)
        if config.fusion not in ("early", "late"):
            raise ValueError(f"fusion must be 'early' or 'late', not {config.fusion!r}")
        return config


def published_config(fusion: Fusion) -> RadDiagConfig:
    """The arguments of the authors' eval/train scripts: 5569 classes, resnet, size 256, depth 32, hid_dim 2048."""
    return RadDiagConfig(fusion=fusion)


class LayerNorm(nn.Module):
    """The authors' norm: a * (x - mean) / (std + eps) + b, with the unbiased std (not torch's LayerNorm)."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(features))
        self.b = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # unbiased (n - 1)
        return self.a * (x - mean) / (std + self.eps) + self.b


class MultiHeadedAttention(nn.Module):
    def __init__(self, heads: int, width: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.head_width = heads, width // heads
        self.linears = nn.ModuleList([nn.Linear(width, width) for _ in range(4)])  # q, k, v, out
        self.dropout = nn.Dropout(dropout)

    def scores(self, x: torch.Tensor, key_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention weights (B, h, T, T), values (B, h, T, d)); masked keys get a score of -1e9."""
        batch, tokens, _ = x.shape
        q, k, v = (
            linear(x).view(batch, tokens, self.heads, self.head_width).transpose(1, 2) for linear in self.linears[:3]
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_width)
        scores = scores.masked_fill(~key_valid[:, None, None, :], -1e9)
        return scores.softmax(-1), v

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        weights, v = self.scores(x, key_valid)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(x.shape)
        return self.linears[3](mixed)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(width, hidden)
        self.w_2 = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))


class SublayerConnection(nn.Module):
    """Pre-norm residual: x + dropout(sublayer(norm(x)))."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:  # noqa: ANN001 - a callable on tensors
        return x + self.dropout(sublayer(self.norm(x)))


class EncoderLayer(nn.Module):
    def __init__(self, width: int, self_attn: MultiHeadedAttention, feed_forward: PositionwiseFeedForward,
                 dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.sublayer = nn.ModuleList([SublayerConnection(width, dropout) for _ in range(2)])

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        x = self.sublayer[0](x, lambda normed: self.self_attn(normed, key_valid))
        return self.sublayer[1](x, self.feed_forward)


class Encoder(nn.Module):
    def __init__(self, layer: EncoderLayer, depth: int, width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(depth)])
        self.norm = LayerNorm(width)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_valid)
        return self.norm(x)


class TransformerEncoder(nn.Module):
    """The authors' wrapper: the template modules stay registered (their tensors are in the checkpoint);
    only `encoder` (deep copies of the template layer) runs."""

    def __init__(self, width: int, heads: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.multi_headed_attention = MultiHeadedAttention(heads, width, dropout)
        self.feed_forward = PositionwiseFeedForward(width, width, dropout)  # FFN 2048 -> 2048
        self.encoder_layer = EncoderLayer(width, self.multi_headed_attention, self.feed_forward, dropout)
        self.encoder = Encoder(self.encoder_layer, depth, width)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, key_valid)


class Attention1D(nn.Module):
    """Slices -> one scan vector: [CLS] + slice features + learned positions, valid slices as the key mask."""

    def __init__(self, config: RadDiagConfig) -> None:
        super().__init__()
        width = config.hidden
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_emb = nn.Parameter(torch.zeros(config.max_depth + 1, width))
        self.transformer_encoder = TransformerEncoder(width, config.slice_heads, config.slice_layers, config.dropout)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)

    def tokens(self, slices: torch.Tensor, slice_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, depth, _ = slices.shape
        x = torch.cat([self.cls_token.expand(batch, -1, -1), slices], dim=1) + self.pos_emb[: depth + 1]
        valid = torch.cat([slice_valid.new_ones(batch, 1), slice_valid], dim=1)
        return x, valid

    def forward(self, slices: torch.Tensor, slice_valid: torch.Tensor) -> torch.Tensor:
        x, valid = self.tokens(slices, slice_valid)
        return self.transformer_encoder(x, valid)[:, 0]


class VitFuse(nn.Module):
    """Scans -> one case vector (early fusion): [CLS] + scan vectors + modality embedding; no positions."""

    def __init__(self, config: RadDiagConfig) -> None:
        super().__init__()
        width = config.hidden
        self.mod_embed = nn.Parameter(torch.zeros(config.num_modalities, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.transformer_encoder = TransformerEncoder(width, config.fuse_heads, config.fuse_layers, config.dropout)
        nn.init.normal_(self.mod_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, scans: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        batch = scans.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), scans + self.mod_embed[modality]], dim=1)
        valid = torch.cat([modality.new_ones(batch, 1, dtype=torch.bool), modality > 0], dim=1)
        return self.transformer_encoder(x, valid)[:, 0]


def build_resnet(config: RadDiagConfig) -> nn.Module:
    """A Bottleneck ResNet; (3, 4, 6, 3) x (64..512) is ResNet-50. Its 1000-class `fc` is kept, never run."""
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(
        Bottleneck,
        layers=config.resnet_layers,
        channels=config.resnet_channels,
        stem_width=config.stem_width,
        num_classes=1000,
    )


class RadNet(nn.Module):
    """Inputs: `scans` (B, N, D, H, W) in [0, 1], `slice_valid` (B, N, D) bool, `modality` (B, N) long
    (0 = empty slot; early fusion only). Output logits: (B, classes) early; (B, N, classes) late."""

    def __init__(self, config: RadDiagConfig) -> None:
        super().__init__()
        self.config = config
        self.resnet2D = build_resnet(config)
        self.attention1D = Attention1D(config)
        if config.fusion == "early":
            self.vitFuse = VitFuse(config)
        width = config.hidden
        self.fc = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, config.num_classes))

    def slice_features(self, slices: torch.Tensor) -> torch.Tensor:
        """(S, H, W) grey slices -> (S, hidden): grey repeated to 3 channels, no mean/std, average pooled."""
        grey = slices[:, None].expand(-1, 3, -1, -1)
        return self.resnet2D.forward_head(self.resnet2D.forward_features(grey), pre_logits=True)

    def scan_vectors(self, scans: torch.Tensor, slice_valid: torch.Tensor) -> torch.Tensor:
        """(B, N, D, H, W) -> (B, N, hidden). Only valid slices go through the ResNet (padding would only be
        masked out afterwards; in eval mode BatchNorm treats each slice on its own, so the result is the same)."""
        batch, n_scans, depth, height, width = scans.shape
        features = scans.new_zeros(batch * n_scans * depth, self.config.hidden)
        flat_valid = slice_valid.reshape(-1)
        if flat_valid.any():
            features[flat_valid] = self.slice_features(scans.reshape(-1, height, width)[flat_valid]).to(features.dtype)
        features = features.view(batch * n_scans, depth, -1)
        vectors = self.attention1D(features, slice_valid.reshape(batch * n_scans, depth))
        return vectors.view(batch, n_scans, -1)

    def forward(
        self, scans: torch.Tensor, slice_valid: torch.Tensor, modality: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        vectors = self.scan_vectors(scans, slice_valid.bool())
        if self.config.fusion == "early":
            if modality is None:
                raise ValueError("early fusion needs the modality id of every scan slot")
            return {"logits": self.fc(self.vitFuse(vectors, modality.long()))}
        return {"logits": self.fc(vectors)}


def build_model(config: RadDiagConfig) -> RadNet:
    return RadNet(config)


def state_dict_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Names and shapes in state_dict() order, as the manifests list them."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def unique_parameters(model: nn.Module) -> int:
    """Parameters counted once (shared template tensors are one tensor)."""
    return sum(p.numel() for p in model.parameters())
