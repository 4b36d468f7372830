"""KEP (ECCV 2024) in one file: image towers, the knowledge-enhanced BERT text tower, the joint model.

Parameter names follow the published `pytorch_model.bin` files so that a strict load succeeds:

- KEP-32: open_clip's VisionTransformer (ViT-B/32) under `visual.*` (`conv1`, `class_embedding`,
  `positional_embedding`, `ln_pre`, `transformer.resblocks.N`, `ln_post`, `proj`).
- KEP-16: BiomedCLIP's open_clip timm tower: a timm ViT-B/16 under `visual.trunk.*` and a bias-free
  linear projection `visual.head.proj`.
- KEP-CTP: CTransPath, a Swin-T with a convolutional stem. Its checkpoints use timm 0.5.4 names
  (patch merging at the *end* of stages 0-2, masks and indices stored as buffers); the tower here is
  current timm's Swin and `ctp_key_from_published` maps names (load.py applies it).
- `visual_head`: Linear-GELU-Linear to the 512-d joint space; `text.bert_model` (a transformers
  BertModel with pooler) + `text.mlp_embed` (768->512->512); `logit_scale` (0-d, log 1/temperature).

Training checkpoints also carry `knowledge.*`, a second BERT (the frozen knowledge encoder used only
by the stage-2 loss); inference ignores it.

KEEP (KEP's successor, MIT, HF `Astaxanthin/KEEP`) is the `keep` variant and its own class `KEEP`: per
the authors' published loading code, `visual` is timm's `vit_large_patch16_224` directly (layer scale
1e-5, no head, class-token pool), `visual_head` Linear(1024->P)-GELU-Linear(P->P) with P the config's
`projection_dim` (768), `text` a plain BertModel whose pooler output *is* the text feature (no MLP),
and `logit_scale`. No key manifest of the released file was available to check this against.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Variant = Literal["kep32", "kep16", "ctp", "keep"]


@dataclass
class BertShape:
    """The BERT text tower's size. The published towers are PubMedBERT-base."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    # Dropout does not change inference; tiny smoke towers train with 0 (a 32-wide random BERT's [CLS]
    # barely depends on its input at first, and dropout noise drowns that signal).
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1


@dataclass
class KEPConfig:
    """Everything needed to build a KEP model; saved as `kep_config.json` beside the weights."""

    variant: Variant = "kep32"
    embed_dim: int = 512
    image_size: int = 224
    # ViT towers (kep32, kep16)
    vit_width: int = 768
    vit_layers: int = 12
    vit_heads: int = 12
    vit_patch: int = 32
    vit_mlp_ratio: float = 4.0
    # open_clip builds its ViT with nn.GELU unless a "-quickgelu" model is asked for; KEP's configs do not ask.
    quick_gelu: bool = False
    # KEEP's timm ViT-L has LayerScale (init 1e-5): `blocks.N.ls1.gamma` / `ls2.gamma` parameters.
    layer_scale_init: float | None = None
    # Swin tower (ctp)
    swin_embed_dim: int = 96
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)
    swin_heads: tuple[int, ...] = (3, 6, 12, 24)
    swin_window: int = 7
    # Text tower
    bert: BertShape = field(default_factory=BertShape)
    text_hidden: int = 512
    head_hidden: int = 512
    temperature: float = 0.04
    max_text_length: int = 256

    @property
    def visual_out(self) -> int:
        """Width the image tower hands to `visual_head`."""
        if self.variant == "ctp":
            return self.swin_embed_dim * 2 ** (len(self.swin_depths) - 1)
        if self.variant == "keep":
            return self.vit_width
        return self.embed_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> KEPConfig:
        raw = dict(raw)
        bert = BertShape(**raw.pop("bert", {}))
        for key in ("swin_depths", "swin_heads"):
            if key in raw:
                raw[key] = tuple(raw[key])
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"kep_config.json: unknown fields {sorted(unknown)}")
        return cls(bert=bert, **raw)


def published_config(variant: Variant, vocab_size: int = 30522) -> KEPConfig:
    """The configuration of the released KEP-32 / KEP-16 / KEP-CTP checkpoints (and KEEP's)."""
    if variant == "keep":
        return KEPConfig(
            variant="keep",
            embed_dim=768,
            head_hidden=768,
            text_hidden=768,
            vit_width=1024,
            vit_layers=24,
            vit_heads=16,
            vit_patch=16,
            layer_scale_init=1e-5,
            bert=BertShape(vocab_size=vocab_size),
            temperature=0.04,
        )
    patch = {"kep32": 32, "kep16": 16, "ctp": 16}[variant]
    temperature = 0.07 if variant == "ctp" else 0.04  # easy_inference builds CTP with the class default
    return KEPConfig(variant=variant, vit_patch=patch, bert=BertShape(vocab_size=vocab_size), temperature=temperature)


# --------------------------------------------------------------------------------------------------
# KEP-32: open_clip's own VisionTransformer (the authors built KEP-32 on open_clip; its names are the published ones)


def clip_vit(cfg: KEPConfig) -> nn.Module:
    """open_clip's VisionTransformer: patchify, class token, pre-norm transformer, the class token's post-norm
    projected to `embed_dim` (`conv1`, `class_embedding`, `positional_embedding`, `ln_pre`,
    `transformer.resblocks.N`, `ln_post`, `proj`, exactly the released KEP-32 keys)."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    return VisionTransformer(
        image_size=cfg.image_size,
        patch_size=cfg.vit_patch,
        width=cfg.vit_width,
        layers=cfg.vit_layers,
        heads=cfg.vit_heads,
        mlp_ratio=cfg.vit_mlp_ratio,
        output_dim=cfg.embed_dim,
        act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
    )


# --------------------------------------------------------------------------------------------------
# KEP-16: BiomedCLIP's timm ViT-B/16 tower


def timm_vit(cfg: KEPConfig, **extra: object) -> nn.Module:
    """timm's VisionTransformer with the configured geometry, class-token pooled, without a classifier head."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.vit_patch,
        embed_dim=cfg.vit_width,
        depth=cfg.vit_layers,
        num_heads=cfg.vit_heads,
        mlp_ratio=cfg.vit_mlp_ratio,
        num_classes=0,
        global_pool="token",
        **extra,
    )


class TimmViTTower(nn.Module):
    """open_clip's TimmModel as BiomedCLIP configures it: timm ViT (class-token pool) + linear projection.

    Not TimmModel itself: it builds its trunk from a timm model *name* (ViT-B/16's fixed geometry), so the tiny
    random-weight towers the tests and smoke recipe use could not be expressed; the trunk here is the same timm
    class with the geometry from the config, and the names (`trunk.*`, `head.proj`) are TimmModel's."""

    def __init__(self, cfg: KEPConfig) -> None:
        super().__init__()
        self.trunk = timm_vit(cfg)
        self.head = nn.Sequential()
        self.head.add_module("drop", nn.Dropout(0.0))
        self.head.add_module("proj", nn.Linear(cfg.vit_width, cfg.embed_dim, bias=False))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(pixels))


# --------------------------------------------------------------------------------------------------
# KEP-CTP: CTransPath = Swin-T with a convolutional stem


class ConvStem(nn.Module):
    """CTransPath's stem: two stride-2 3x3 conv+BN+ReLU, then a 1x1 conv to the embedding width.

    Named `proj.0..6` and `norm` as in the published checkpoints; returns NHWC as current timm Swin expects.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if patch_size != 4:
            raise ValueError("CTransPath's ConvStem downsamples by 4")
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        stem: list[nn.Module] = []
        width_in, width_out = in_chans, embed_dim // 8
        for _ in range(2):
            stem += [
                nn.Conv2d(width_in, width_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width_out),
                nn.ReLU(inplace=True),
            ]
            width_in, width_out = width_out, width_out * 2
        stem.append(nn.Conv2d(width_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*stem)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pixels).permute(0, 2, 3, 1))


def swin_tower(cfg: KEPConfig) -> nn.Module:
    """timm's SwinTransformer (current layout) with CTransPath's stem and no head; 768-d pooled output."""
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        img_size=cfg.image_size,
        patch_size=4,
        embed_dim=cfg.swin_embed_dim,
        depths=cfg.swin_depths,
        num_heads=cfg.swin_heads,
        window_size=cfg.swin_window,
        embed_layer=ConvStem,
        num_classes=0,
    )


_OLD_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_OLD_ONLY_BUFFERS = re.compile(r"(attn_mask|relative_position_index)$")


def ctp_key_from_published(key: str) -> str | None:
    """Name in SwinTower.swin for a published (timm 0.5.4) CTransPath key; None for derived buffers.

    timm 0.5.4 merges patches at the end of stage i, current timm at the start of stage i+1
    (same weights, same 2x2 concatenation order); window masks and index tables are recomputed.
    """
    if _OLD_ONLY_BUFFERS.search(key):
        return None
    moved = _OLD_DOWNSAMPLE.match(key)
    if moved:
        return f"layers.{int(moved.group(1)) + 1}.downsample." + key[moved.end() :]
    return key


# --------------------------------------------------------------------------------------------------
# Text tower and the joint model


class PathBert(nn.Module):
    """KEP's PATH_BERT: BERT pooler output through an MLP into the joint space."""

    def __init__(self, cfg: KEPConfig) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        bert_config = BertConfig(**asdict(cfg.bert))
        self.bert_model = BertModel(bert_config, add_pooling_layer=True)
        self.mlp_embed = nn.Sequential(
            nn.Linear(cfg.bert.hidden_size, cfg.text_hidden), nn.GELU(), nn.Linear(cfg.text_hidden, cfg.embed_dim)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.bert_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.mlp_embed(pooled)


class _ImageTextModel(nn.Module):
    """What KEP and KEEP share: CLIP training's forward over their own `encode_image` / `encode_text`."""

    logit_scale: nn.Parameter

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features and the (un-clamped) logit scale, as CLIP training uses them."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        return image, text, self.logit_scale.exp()


class KEP(_ImageTextModel):
    """Image tower + visual head, BERT text tower, learned temperature.

    As the authors' `KEP`: `encode_image` is un-normalised, `encode_text` unit-norm (their PATH_BERT.forward
    normalises); `self.text(...)` is the un-normalised text MLP output (their `PATH_BERT.encode_text`).
    """

    def __init__(self, cfg: KEPConfig) -> None:
        super().__init__()
        self.config = cfg
        towers = {"kep32": clip_vit, "kep16": TimmViTTower, "ctp": swin_tower}
        if cfg.variant not in towers:
            raise ValueError(f"unknown KEP variant '{cfg.variant}' (kep32, kep16, ctp; keep builds KEEP)")
        self.visual = towers[cfg.variant](cfg)
        self.visual_head = nn.Sequential(
            nn.Linear(cfg.visual_out, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, cfg.embed_dim)
        )
        self.text = PathBert(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual_head(self.visual(pixels))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(input_ids, attention_mask), dim=-1)


class KEEP(_ImageTextModel):
    """KEEP: timm ViT-L/16 + visual head, a BERT whose pooler output is the text feature, learned temperature.

    Same interface as `KEP` (`encode_image` / `encode_text`, `logit_scale`, `config`; callers normalise), so the
    classifier, tool and evals use either.
    """

    def __init__(self, cfg: KEPConfig) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        if cfg.bert.hidden_size != cfg.embed_dim:
            raise ValueError(
                f"KEEP's text feature is BERT's pooler output: bert.hidden_size ({cfg.bert.hidden_size}) "
                f"must equal embed_dim ({cfg.embed_dim})"
            )
        self.config = cfg
        self.visual = timm_vit(cfg, init_values=cfg.layer_scale_init, dynamic_img_size=True)
        self.visual_head = nn.Sequential(
            nn.Linear(cfg.vit_width, cfg.embed_dim), nn.GELU(), nn.Linear(cfg.embed_dim, cfg.embed_dim)
        )
        self.text = BertModel(BertConfig(**asdict(cfg.bert)), add_pooling_layer=True)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual_head(self.visual(pixels))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def build_model(cfg: KEPConfig) -> KEP | KEEP:
    """The model class a configuration describes (KEEP for the `keep` variant, KEP otherwise)."""
    return KEEP(cfg) if cfg.variant == "keep" else KEP(cfg)


def published_state_dict(model: KEP | KEEP) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers under the published checkpoint names.

    This is the layout training writes and load.py reads. For CTP the tower's names are mapped back
    to timm 0.5.4's; the derived buffers old timm also stored (window masks, index tables) are left
    out (load.py ignores them when a published file has them).
    """
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if model.config.variant == "ctp" and name.startswith("visual."):
            name = "visual." + _ctp_key_to_published(name[len("visual.") :])
        state[name] = tensor
    return state


def published_state_dict_shapes(model: KEP | KEEP) -> dict[str, list[int]]:
    """Published names and shapes (works on the meta device)."""
    return {name: list(tensor.shape) for name, tensor in published_state_dict(model).items()}


def _ctp_key_to_published(key: str) -> str:
    moved = re.match(r"^layers\.(\d+)\.downsample\.", key)
    if moved:
        return f"layers.{int(moved.group(1)) - 1}.downsample." + key[moved.end() :]
    return key
