"""Round trip: the smoke recipe trains tiny KEP towers, and the specialist's loader and classifier use the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medagent.specialists.pathology.infer import KEPClassifier
from medagent.specialists.pathology.labels import Label, LabelSet
from medagent.specialists.pathology.load import load_kep
from medagent.training.pathology.recipe import SYNTHETIC_CLASSES, load_config, main, synthetic_data

SMOKE = Path(__file__).resolve().parents[2] / "training" / "pathology" / "configs" / "smoke.yaml"


# Seeds 0-14 were all checked (21/21 each, the true label's probability >= 0.98); two run here.
@pytest.mark.parametrize("seed", [0, 1])
def test_smoke_run_overfits_and_the_reloaded_model_ranks_each_image_own_label_first(tmp_path, seed):
    out = main(SMOKE, [f"output_dir={tmp_path / 'kep'}", f"seed={seed}"])
    assert (out / "pytorch_model.bin").is_file() and (out / "kep_config.json").is_file()
    saved = torch.load(out / "pytorch_model.bin", weights_only=True)["state_dict"]
    assert any(k.startswith("knowledge.") for k in saved)  # the frozen knowledge BERT, as KEP's checkpoints carry
    # Stage 2 moved the text head away from the frozen stage-1 copy saved beside it.
    assert not torch.equal(saved["text.mlp_embed.0.weight"], saved["knowledge.mlp_embed.0.weight"])

    loaded = load_kep(out)  # the specialist's own loader, tokenizer and transform
    assert loaded.config.variant == "kep32" and len(loaded.ignored_keys) > 0
    classifier = KEPClassifier(loaded)
    cfg = load_config(SMOKE, [f"seed={seed}"])
    pairs, _ = synthetic_data(cfg["data"]["synthetic"]["per_class"], cfg["data"]["synthetic"]["image_size"], seed)
    # Zero-shot with the prompt ensemble (every template x name and synonym), not the training captions.
    labels = LabelSet("synthetic", tuple(Label(name, synonyms) for name, (synonyms, _) in SYNTHETIC_CLASSES.items()))
    wrong = []
    for index, (image, caption, label) in enumerate(pairs):
        result = classifier.classify(image, labels)
        assert abs(sum(result.probabilities) - 1) < 1e-4
        top, p = result.ranked()[0]
        if top != label:
            wrong.append(f"image {index} ({label!r}, caption {caption!r}) ranked {top!r} first (p={p:.2f})")
    assert len(pairs) == 21 and wrong == []


def test_overrides_reach_the_config():
    cfg = load_config(SMOKE, ["stage2.epochs=1", "model.kep.vit_layers=1"])
    assert cfg["stage2"]["epochs"] == 1 and cfg["model"]["kep"]["vit_layers"] == 1


def test_stage2_loss_is_open_clips_with_duplicates_masked_out_of_the_negatives():
    from open_clip.loss import ClipLoss

    from medagent.training.pathology.recipe import clip_loss

    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    scale = torch.tensor(10.0)
    loss = clip_loss()
    assert torch.equal(loss(a, b, scale), ClipLoss()(a, b, scale))
    groups = torch.tensor([0, 1, 0, 2, 1])  # rows 0 and 2, 1 and 4 share a label
    logits = scale * a @ b.T
    expected = 0.0
    for m in (logits, logits.T):  # each row's own column, against the columns of other labels only
        for i in range(5):
            keep = [j for j in range(5) if j == i or groups[j] != groups[i]]
            expected += -(m[i, i] - torch.logsumexp(m[i, keep], dim=0)) / 10
    torch.testing.assert_close(loss(a, b, scale, groups), expected)
    assert not torch.allclose(loss(a, b, scale, groups), loss(a, b, scale))
