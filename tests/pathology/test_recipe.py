"""Round trip: the smoke recipe trains tiny KEP towers, and the specialist's loader and classifier use the result."""

from __future__ import annotations

from pathlib import Path

import torch
from medagent.specialists.pathology.infer import KEPClassifier
from medagent.specialists.pathology.labels import resolve
from medagent.specialists.pathology.load import load_kep
from medagent.training.pathology.recipe import SYNTHETIC_CLASSES, load_config, main, synthetic_data

SMOKE = Path(__file__).resolve().parents[2] / "training" / "pathology" / "configs" / "smoke.yaml"


def test_smoke_training_writes_a_checkpoint_the_classifier_loads(tmp_path):
    # A short run: the full smoke config does not yet reliably overfit (see the recipe report), so this
    # test checks the round trip of the checkpoint format, not the ranking.
    out = main(SMOKE, [f"output_dir={tmp_path / 'kep'}", "stage1.epochs=2", "stage2.epochs=3"])
    assert (out / "pytorch_model.bin").is_file() and (out / "kep_config.json").is_file()
    saved = torch.load(out / "pytorch_model.bin", weights_only=True)["state_dict"]
    assert any(k.startswith("knowledge.") for k in saved)  # the frozen knowledge BERT, as KEP's checkpoints carry

    loaded = load_kep(out)
    assert loaded.config.variant == "kep32" and len(loaded.ignored_keys) > 0
    classifier = KEPClassifier(loaded)
    cfg = load_config(SMOKE, [])
    per_class = cfg["data"]["synthetic"]["per_class"]
    pairs, _ = synthetic_data(per_class, cfg["data"]["synthetic"]["image_size"], cfg["seed"])
    labels = resolve(list(SYNTHETIC_CLASSES))
    truth = [label for label in SYNTHETIC_CLASSES for _ in range(per_class)]
    results = [classifier.classify(image, labels) for image, _ in pairs]
    assert len(results) == len(truth) and all(r.labels == list(SYNTHETIC_CLASSES) for r in results)
    assert all(abs(sum(r.probabilities) - 1) < 1e-4 for r in results)
    # Stage 2 moved the text head away from the frozen stage-1 copy saved beside it.
    assert not torch.equal(saved["text.mlp_embed.0.weight"], saved["knowledge.mlp_embed.0.weight"])


def test_overrides_reach_the_config():
    cfg = load_config(SMOKE, ["stage2.epochs=1", "model.kep.vit_layers=1"])
    assert cfg["stage2"]["epochs"] == 1 and cfg["model"]["kep"]["vit_layers"] == 1
