"""Fixtures for the PMC-CLIP tests: a WordPiece tokenizer and tiny random-weight checkpoints saved as open_clip saves them.

The checkpoint is `{'epoch', 'name', 'state_dict': {'module.<key>': tensor}}` (open_clip's training format, what the
released `checkpoint.pt` is), from a tiny configuration of the real architecture, plus `pmcclip_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.pmcclip.model import PMCCLIP, BertShape, PMCCLIPConfig

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "tests/data/pmcclip/images"
WORDS = (
    "chest x-ray radiograph ct scan mri brain abdomen ultrasound histopathology pneumonia pleural effusion "
    "pneumothorax cardiomegaly normal fracture lung nodule liver kidney spleen a medical image of figure showing"
)


def tiny_config(vocab_size: int, cls_token_id: int) -> PMCCLIPConfig:
    bert = BertShape(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
    )
    return PMCCLIPConfig(
        embed_dim=32,
        image_size=64,
        vision_layers=(1, 1, 1, 1),
        vision_width=32,
        bert=bert,
        fusion_layers=1,
        fusion_heads=2,
        cls_token_id=cls_token_id,
    )


def make_tokenizer(folder: Path) -> Path:
    from medagent.training.pathology.recipe import build_tokenizer

    build_tokenizer([WORDS, *WORDS.split()], folder, vocab_size=300)
    return folder


def calibration_images() -> list:
    """Slices of the example CT and MR volumes that are NOT among tests/data/pmcclip/images (other z positions)."""
    import nibabel as nib
    import numpy as np

    from medagent.specialists.pmcclip.preprocess import to_rgb

    ct = nib.load(REPO / "examples/data/ct_small.nii.gz").get_fdata()
    mr = nib.load(REPO / "examples/data/mr_small.nii.gz").get_fdata()
    committed = {"ct": (4, 14, 24), "mr": (5, 14)}  # the z of tests/data/pmcclip/images/*_axial_*.png
    return [to_rgb(np.rot90(ct[:, :, z]).astype(np.float32)) for z in range(0, 30, 3) if z not in committed["ct"]] + [
        to_rgb(np.rot90(mr[:, :, z]).astype(np.float32)) for z in range(1, 20, 3) if z not in committed["mr"]
    ]


def calibrate_batchnorm(model: PMCCLIP, images: list) -> None:
    """Estimate the image tower's BatchNorm statistics on `images` (forward passes only, no gradient step).

    A random checkpoint's running mean 0 / variance 1 do not match its activations: every conv shrinks them, so by
    the attention pool the features are ~1e-2 and the pool's biases dominate; all images then embed to cosine
    1.0000 of each other. A trained checkpoint's statistics match its activations; these are estimated the same way
    (BatchNorm's own cumulative average), on images disjoint from the ones the tests retrieve.
    """
    from medagent.specialists.pmcclip.preprocess import pmcclip_transform

    transform = pmcclip_transform(model.config.image_size)
    for module in model.visual.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.visual.train()
    with torch.no_grad():
        model.visual(torch.stack([transform(image) for image in images]))
    for module in model.visual.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    model.eval()


def write_checkpoint(
    folder: Path, tokenizer_dir: Path, seed: int = 0, extra: dict | None = None, calibrate: bool = False
) -> Path:
    """A tiny PMC-CLIP folder: checkpoint.pt in open_clip's format, the tokenizer, pmcclip_config.json.
    `calibrate`: BatchNorm statistics estimated on calibration_images() (see calibrate_batchnorm)."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for item in tokenizer_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    config = tiny_config(len(tokenizer), tokenizer.cls_token_id)
    torch.manual_seed(seed)
    model = PMCCLIP(config)
    if calibrate:
        calibrate_batchnorm(model, calibration_images())
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state.update(extra or {})
    torch.save({"epoch": 100, "name": "tiny", "state_dict": state}, folder / "checkpoint.pt")
    (folder / "pmcclip_config.json").write_text(json.dumps(config.to_dict()))
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("pmcclip_tokenizer"))


@pytest.fixture(scope="session")
def pmcclip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("pmcclip"), tokenizer_dir)


@pytest.fixture(scope="session")
def checkpoint_factory():
    """`write_checkpoint(folder, tokenizer_dir, seed=0, extra=None)` for tests that need their own copy."""
    return write_checkpoint


@pytest.fixture(scope="session")
def calibrated_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random-weight checkpoint whose BatchNorm statistics were estimated on other example slices."""
    return write_checkpoint(tmp_path_factory.mktemp("pmcclip_calibrated"), tokenizer_dir, calibrate=True)
