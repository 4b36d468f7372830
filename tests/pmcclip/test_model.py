"""PMC-CLIP's architecture and loader: the released layout on the meta device, strict loading, readable mismatches."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from medagent.specialists.pmcclip.load import CheckpointError, load_pmcclip
from medagent.specialists.pmcclip.model import PMCCLIP, published_config, state_dict_shapes


def test_released_layout_on_the_meta_device():
    """What MODELS.md section 4 states of the released RN50_fusion4 checkpoint: key families, 768-d joint space,
    text_projection 768x768, mlm_projection 768x30522, a 3-4-6-3 ResNet with attention pooling at 224 px."""
    with torch.device("meta"):
        model = PMCCLIP(published_config())
    shapes = state_dict_shapes(model)
    families = {k.split(".")[0] for k in shapes}
    assert families == {
        "visual", "text_encoder", "text_projection", "mlm_projection", "fusion_module", "img_special_token",
        "logit_scale", "positional_embedding", "ln_final",
    }
    assert shapes["text_projection"] == [768, 768]
    assert shapes["mlm_projection"] == [768, 30522]
    assert shapes["logit_scale"] == []
    assert shapes["text_encoder.embeddings.word_embeddings.weight"] == [30522, 768]
    assert sum(k.startswith("text_encoder.encoder.layer.") and k.endswith("attention.self.query.weight") for k in shapes) == 12
    assert [len({int(k.split(".")[2]) for k in shapes if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    # attention pooling over the 7x7 grid of a 224 px input plus the mean token, 2048 channels, out to 768
    assert shapes["visual.attnpool.positional_embedding"] == [50, 2048]
    assert shapes["visual.attnpool.c_proj.weight"] == [768, 2048]
    assert sum(k.startswith("fusion_module.resblocks.") and k.endswith("attn.in_proj_weight") for k in shapes) == 4
    with torch.device("meta"):
        pixels = torch.empty(1, 3, 224, 224)
        assert list(model.encode_image(pixels).shape) == [1, 768]


def test_tiny_checkpoint_loads_strictly_and_embeds(pmcclip_dir):
    loaded = load_pmcclip(pmcclip_dir)
    assert loaded.weights.name == "checkpoint.pt" and not loaded.ignored_keys
    raw = torch.load(pmcclip_dir / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in raw)
    mine = loaded.model.state_dict()
    assert set(mine) == {k[len("module."):] for k in raw}
    assert all(torch.equal(mine[k[len("module."):]], v) for k, v in raw.items())
    from medagent.specialists.pmcclip.infer import PMCCLIPEncoder

    encoder = PMCCLIPEncoder(loaded)
    rows = encoder.embed_images([Image.new("RGB", (80, 100), (120, 60, 30)), Image.new("L", (64, 64), 200).convert("RGB")])
    assert rows.shape == (2, 32) and abs(float((rows**2).sum(1)[0]) - 1) < 1e-5
    result = encoder.classify(Image.new("RGB", (64, 64), (10, 10, 10)), ["chest x-ray", "brain mri", "liver ct"])
    assert abs(sum(result.probabilities) - 1) < 1e-5 and len(result.ranked()) == 3


def test_unexpected_and_missing_keys_are_named_in_one_line(tmp_path, tokenizer_dir, checkpoint_factory):
    write_checkpoint = checkpoint_factory
    extra = write_checkpoint(tmp_path / "extra", tokenizer_dir, extra={"module.visual.head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError) as info:
        load_pmcclip(extra)
    assert "1 unexpected: visual.head.weight" in str(info.value) and "\n" not in str(info.value)

    folder = write_checkpoint(tmp_path / "missing", tokenizer_dir)
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    del checkpoint["state_dict"]["module.text_projection"]
    torch.save(checkpoint, folder / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="1 missing: text_projection"):
        load_pmcclip(folder)

    config = json.loads((folder / "pmcclip_config.json").read_text())
    config["embed_dim"] = 48
    (folder / "pmcclip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="with other shapes: visual.attnpool.c_proj.weight"):
        load_pmcclip(folder)


def test_no_weights_or_no_tokenizer_is_one_clear_line(tmp_path, pmcclip_dir):
    with pytest.raises(CheckpointError, match="no PMC-CLIP weights found"):
        load_pmcclip(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes((pmcclip_dir / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match="no tokenizer .*PubMedBERT"):
        load_pmcclip(tmp_path)


def test_transform_statistics_are_open_clips():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from medagent.specialists.pmcclip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, pmcclip_transform

    assert OPENAI_CLIP_MEAN == tuple(OPENAI_DATASET_MEAN) and OPENAI_CLIP_STD == tuple(OPENAI_DATASET_STD)
    tensor = pmcclip_transform(224)(Image.new("RGB", (300, 500), (255, 255, 255)))
    assert list(tensor.shape) == [3, 224, 224]
    assert torch.allclose(tensor[:, 0, 0], (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD), atol=1e-4)
