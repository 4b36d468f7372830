"""The full-size KEP architectures, built on the meta device, have the published checkpoints' key layout.

The manifests in tests/data/pathology were dumped from the KEP repository's own classes
(see each file's header); a strict load of a real `pytorch_model.bin` needs these names and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.pathology.load import (
    CheckpointError,
    config_for,
    detect_variant,
    keep_config_from_hf,
    to_model_names,
)
from medagent.specialists.pathology.model import KEP, build_model, published_config, published_state_dict_shapes

DATA = Path(__file__).resolve().parents[1] / "data" / "pathology"
MANIFESTS = {"kep32": "kep32_state_dict.json", "kep16": "kep16_state_dict.json", "ctp": "kep_ctp_state_dict.json"}


def _manifest(variant: str) -> dict:
    return json.loads((DATA / MANIFESTS[variant]).read_text())


def _meta_model(variant: str) -> KEP:
    with torch.device("meta"):
        return KEP(published_config(variant))


@pytest.mark.parametrize("variant", ["kep32", "kep16"])
def test_vit_variants_match_published_keys_and_shapes(variant: str) -> None:
    manifest = _manifest(variant)
    published = manifest["state_dict"]
    ours = published_state_dict_shapes(_meta_model(variant))
    assert sorted(set(published) - set(ours)) == []
    assert sorted(set(ours) - set(published)) == []
    assert {k: v for k, v in ours.items() if published[k] != v} == {}
    assert sum(torch.Size(s).numel() for s in ours.values()) == manifest["total_params"]
    assert detect_variant(published) == variant


def test_ctp_matches_published_keys_after_mapping_old_timm_names() -> None:
    manifest = _manifest("ctp")
    published = manifest["state_dict"]
    model = _meta_model("ctp")
    # The published file stores timm 0.5.4's derived buffers; they are recomputed, not loaded.
    fake_state = {k: torch.empty(0) for k in published}
    mapped, ignored = to_model_names(fake_state, "ctp")
    assert all("attn_mask" in k or "relative_position_index" in k for k in ignored)
    assert len(ignored) == 17
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(mapped) ^ set(ours)) == []
    # Shapes, compared under published names (patch merging moved back to the end of stages 0-2).
    back = published_state_dict_shapes(model)
    assert {k: v for k, v in back.items() if published[k] != v} == {}
    assert detect_variant(published) == "ctp"


def test_training_checkpoint_knowledge_bert_is_accepted_and_ignored() -> None:
    published = _manifest("kep32")["state_dict"]
    training = dict(published)
    training.update({"knowledge." + k[len("text.") :]: s for k, s in published.items() if k.startswith("text.")})
    assert sum(k.startswith("knowledge.") for k in training) == 203
    mapped, ignored = to_model_names({k: torch.empty(0) for k in training}, "kep32")
    assert len(ignored) == 203 and set(mapped) == set(published)


def test_keep_matches_the_facts_of_its_published_loading_code(tmp_path: Path) -> None:
    """No key manifest of KEEP's released file was available: these are the facts of its loading code
    (timm vit_large_patch16_224 with layer scale under `visual.`, a 1024->768->768 `visual_head`, a plain
    BertModel under `text.` built from config.json's text_config, `logit_scale`)."""
    bert = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "architectures": ["BertModel"], "model_type": "bert"}  # fmt: skip
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "keep", "projection_dim": 768, "text_config": bert})
    )
    config = keep_config_from_hf(tmp_path / "config.json")
    with torch.device("meta"):
        shapes = published_state_dict_shapes(build_model(config))
    assert shapes["visual.pos_embed"] == [1, 197, 1024] and shapes["visual.patch_embed.proj.weight"] == [
        1024,
        3,
        16,
        16,
    ]
    assert shapes["visual.blocks.23.ls2.gamma"] == [1024] and "visual.blocks.24.norm1.weight" not in shapes
    assert shapes["visual_head.0.weight"] == [768, 1024] and shapes["visual_head.2.weight"] == [768, 768]
    assert shapes["text.embeddings.word_embeddings.weight"] == [30522, 768]
    assert shapes["text.pooler.dense.weight"] == [768, 768] and "text.encoder.layer.11.output.dense.bias" in shapes
    assert shapes["logit_scale"] == [] and not any(".mlp_embed." in k or k.startswith("visual.head") for k in shapes)
    assert len([k for k in shapes if k.startswith("visual.")]) == 342
    assert detect_variant(shapes) == "keep"
    # Without medagent's kep_config.json the loader reads KEEP's config.json the same way.
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert config_for(tmp_path, state, None) == config
    # A PubMedBERT config.json (model_type bert) next to KEP weights is never taken for KEEP's.
    (tmp_path / "config.json").write_text(json.dumps(bert))
    with pytest.raises(CheckpointError, match="model_type is 'bert', not 'keep'"):
        keep_config_from_hf(tmp_path / "config.json")
