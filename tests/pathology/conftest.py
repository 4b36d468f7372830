"""Fixtures for the pathology tests: H&E-like PNG tiles, a WordPiece tokenizer, tiny KEP checkpoints.

Everything is made here: the tokenizer with the `tokenizers` library saved as an HF fast-tokenizer
folder, the images as synthetic eosin/haematoxylin textures, the checkpoints as tiny random-weight
configs of the real architectures saved the way training checkpoints are (with `knowledge.*`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from medagent.specialists.pathology.labels import BUILTIN, TEMPLATES
from medagent.specialists.pathology.model import BertShape, KEPConfig, build_model, published_state_dict

EOSIN = (236, 170, 200)
HAEMATOXYLIN = (80, 45, 125)


def he_texture(kind: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A synthetic H&E field: 'tumor' (crowded large nuclei), 'stroma' (fibres, few nuclei), 'fat' (empty cells)."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = np.array((250, 248, 250) if kind == "fat" else EOSIN, dtype=np.float32)
    pixels = base + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    area = width * height
    if kind == "tumor":
        for _ in range(area // 180):
            x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(4, 8)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=HAEMATOXYLIN)
    elif kind == "stroma":
        for _ in range(area // 900):
            x, y = rng.integers(0, width), rng.integers(0, height)
            draw.line((x, y, x + rng.integers(20, 60), y + rng.integers(-8, 8)), fill=(200, 90, 150), width=2)
        for _ in range(area // 2500):
            x, y = rng.integers(0, width), rng.integers(0, height)
            draw.ellipse((x - 6, y - 2, x + 6, y + 2), fill=HAEMATOXYLIN)
    elif kind == "fat":
        step = 40
        for y in range(0, height, step):
            for x in range(0, width, step):
                jitter = rng.integers(-6, 6, 2)
                draw.ellipse((x + jitter[0], y + jitter[1], x + step, y + step), outline=EOSIN, width=2)
    else:
        raise ValueError(kind)
    return image


def make_tokenizer(folder: Path) -> Path:
    """A lower-casing WordPiece tokenizer over the label words, built the way the smoke recipe builds one."""
    from medagent.training.pathology.recipe import build_tokenizer

    corpus = [prompt for label_set in BUILTIN.values() for group in label_set.prompts() for prompt in group]
    corpus += [t.format(w) for t in TEMPLATES for w in ("tumor", "stroma", "fat", "glands", "necrosis", "mucin")]
    build_tokenizer(corpus, folder, vocab_size=400)
    return folder


def tiny_config(variant: str, vocab_size: int) -> KEPConfig:
    bert = BertShape(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    common = dict(variant=variant, embed_dim=32, bert=bert, text_hidden=32, head_hidden=32, max_text_length=48)
    if variant == "ctp":
        return KEPConfig(image_size=112, swin_embed_dim=16, swin_depths=(1, 1, 2), swin_heads=(1, 2, 4), **common)
    if variant == "keep":  # the text feature is BERT's pooler output, so BERT's width is the joint width
        return KEPConfig(
            image_size=64, vit_width=48, vit_layers=2, vit_heads=2, vit_patch=16, layer_scale_init=1e-5, **common
        )
    return KEPConfig(image_size=64, vit_width=32, vit_layers=2, vit_heads=2, vit_patch=16, **common)


def write_checkpoint(folder: Path, tokenizer_dir: Path, variant: str, seed: int = 0) -> Path:
    """A tiny KEP checkpoint folder laid out like a training checkpoint: {'state_dict': ...} with knowledge.*."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in tokenizer_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    config = tiny_config(variant, vocab)
    torch.manual_seed(seed)
    model = build_model(config)
    state = published_state_dict(model)
    if variant == "keep":
        # As KEEP is released: a flat state_dict (no training wrapper, no knowledge BERT) and an HF config.json;
        # kep_config.json describes the tiny image tower (real KEEP's is fixed at ViT-L/16).
        torch.save(state, folder / "pytorch_model.bin")
        hf = {"model_type": "keep", "projection_dim": config.embed_dim, "text_config": config.to_dict()["bert"]}
        (folder / "config.json").write_text(json.dumps(hf))
    else:
        state.update({"knowledge." + k[len("text.") :]: v.clone() for k, v in state.items() if k.startswith("text.")})
        torch.save({"state_dict": state, "epoch": 3}, folder / "pytorch_model.bin")
    (folder / "kep_config.json").write_text(json.dumps(config.to_dict()))
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def kep32_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("kep32"), tokenizer_dir, "kep32")


@pytest.fixture(scope="session")
def tiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patch-sized PNG tiles and one large slide-like PNG (left half glass, right half tumour)."""
    folder = tmp_path_factory.mktemp("tiles")
    for i, kind in enumerate(("tumor", "stroma", "fat")):
        he_texture(kind, (224, 224), seed=i).save(folder / f"{kind}.png")
    slide = Image.new("RGB", (1600, 1200), (246, 246, 246))
    slide.paste(he_texture("tumor", (800, 1200), seed=7), (800, 0))
    slide.save(folder / "slide.png")
    return folder


@pytest.fixture(scope="session")
def checkpoint_factory():
    """`write_checkpoint(folder, tokenizer_dir, variant)` for tests that need another variant or a fresh copy."""
    return write_checkpoint
