"""The full-size KEP architectures, built on the meta device, have the published checkpoints' key layout.

The manifests in tests/data/pathology were dumped from the KEP repository's own classes
(see each file's header); a strict load of a real `pytorch_model.bin` needs these names and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.pathology.load import detect_variant, to_model_names
from medagent.specialists.pathology.model import KEP, published_config, published_state_dict_shapes

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
