"""The fine-tuning recipe's smoke round trip: overfit four VQA-RAD pairs, reload through the specialist, answer them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medagent.specialists.radfm.infer import answer
from medagent.specialists.radfm.load import load_radfm
from medagent.specialists.radfm.preprocess import image_to_tensor
from medagent.training.radfm.recipe import main

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_recipe_overfits_and_reloads(tmp_path: Path, picture) -> None:
    out = main(ROOT / "training/radfm/configs/smoke.yaml", [f"output_dir={tmp_path}"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    # Saved in the published layout (LoRA merged away) and loaded strictly by the specialist's loader.
    saved = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert not any("lora" in key for key in saved)
    bundle = load_radfm(out, dtype="fp32")
    rows = [json.loads(line) for line in (ROOT / "tests/data/radfm/vqa_rad/dev.jsonl").read_text().splitlines()]
    trained = [row for row in rows if row["fold"] == "train"][:4]
    for row in trained:
        scan = image_to_tensor(picture(Path(row["image"]).name), bundle.config.vision.image_size)
        # The tiny word-level tokenizer lower-cases, so answers come back lower-case.
        assert answer(bundle, row["question"], [scan], max_new_tokens=6) == row["answer"].lower()
