"""The full-size SAT-Nano, SAT-Pro and text encoder, built on the meta device, have the manifests' names and shapes.

The manifests (tests/data/sat) were dumped from the authors' own classes with the DDP `module.` prefix, every conv and
norm under two names, and the 12 deep-supervision keys; the loader's name mapping must turn them into exactly this
implementation's state_dict, and the writer must turn this implementation's back into exactly the manifest.
"""

from __future__ import annotations

import pytest
import torch

from medagent.specialists.sat.load import published_config_for, published_state, segmenter_key, text_key
from medagent.specialists.sat.model import SATSegmenter, nano_config, pro_config, state_dict_shapes
from medagent.specialists.sat.text import SATTextEncoder, biolord_config

from .conftest import manifest

CONFIGS = {"nano": nano_config, "pro": pro_config}


@pytest.mark.parametrize("variant", ["nano", "pro"])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_the_loader_maps_the_manifest_onto_the_full_size_network(variant: str, deep_supervision: bool) -> None:
    published = manifest(variant)
    with torch.device("meta"):
        model = SATSegmenter(CONFIGS[variant](deep_supervision))
    ours = state_dict_shapes(model)
    mapped: dict[str, list[int]] = {}
    for key, shape in published["state_dict"].items():
        name = segmenter_key(key, deep_supervision)
        if name is None:
            continue
        assert mapped.setdefault(name, shape) == shape, f"{key} folds onto {name} with another shape"
    assert list(mapped.items()) == list(ours.items())  # names, shapes and their order
    header = published["header"]
    twins = len(published["state_dict"]) - len(mapped) - (0 if deep_supervision else 12)
    assert twins == header["shared_keys_count"]
    parameters = sum(p.numel() for p in model.parameters())
    if deep_supervision:
        assert parameters == published["total_params"]
        # The writer gives back the published file's keys exactly, in order: what build_tiny and a recipe save.
        written = {k: list(v.shape) for k, v in published_state("segmenter", model).items()}
        assert list(written.items()) == list(published["state_dict"].items())
    else:
        assert parameters == header["deep_supervision"]["total_params_without"]
        assert len(ours) == header["deep_supervision"]["num_keys_without"] - header["shared_keys_count"]


def test_the_loader_maps_the_manifest_onto_the_text_encoder() -> None:
    published = manifest("text_encoder")
    with torch.device("meta"):
        model = SATTextEncoder(biolord_config())
    ours = state_dict_shapes(model)
    mapped = {text_key(k, set(ours)): v for k, v in published["state_dict"].items() if text_key(k, set(ours))}
    assert list(mapped.items()) == list(ours.items())
    assert sum(p.numel() for p in model.parameters()) == published["total_params"] == 110_670_720
    # Only the buffer transformers < 4.31 saved is dropped; an MPNet, not a BERT: no token types, q/k/v/o names.
    assert set(published["state_dict"]) - {"module." + k for k in mapped} == {
        "module.text_tower.biolord.embeddings.position_ids"
    }
    assert ours["text_tower.biolord.embeddings.word_embeddings.weight"] == [30527, 768]
    assert ours["text_tower.biolord.encoder.relative_attention_bias.weight"] == [32, 12]
    assert not any("token_type" in k for k in ours)
    written = {k: list(v.shape) for k, v in published_state("text_encoder", model).items()}
    assert list(written.items()) == list(published["state_dict"].items())


@pytest.mark.parametrize("variant", ["nano", "pro"])
def test_nano_and_pro_are_told_apart_by_their_weights(variant: str, tmp_path) -> None:
    shapes = manifest(variant)["state_dict"]
    fake = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert published_config_for(fake, tmp_path) == CONFIGS[variant]()
