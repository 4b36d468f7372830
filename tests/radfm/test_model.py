"""RadFM architecture and loader: the full-size model against the published key manifest, the tiny model end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medagent.specialists.radfm.infer import answer, encode_prompt
from medagent.specialists.radfm.load import (
    FULL_SIZE_PARAMETERS,
    LEGACY_BUFFER,
    RadFMLoadError,
    load_radfm,
    memory_needed,
    parameter_count,
)
from medagent.specialists.radfm.model import RadFM, RadFMConfig
from medagent.specialists.radfm.preprocess import image_to_tensor, stack_images, volume_to_tensor


def test_full_size_model_has_every_published_key_and_shape(radfm_data: Path) -> None:
    manifest = json.loads((radfm_data / "radfm_state_dict.json").read_text(encoding="utf-8"))
    published = manifest["state_dict"]
    assert len(published) == 908
    with torch.device("meta"):
        model = RadFM(RadFMConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    legacy = sorted(k for k in published if k not in ours)
    # Exactly the 41 buffers old transformers saved (40 rotary tables + BERT position ids), all matched by the
    # loader's allow-list, and nothing else differs.
    assert len(legacy) == 41 and all(LEGACY_BUFFER.match(k) for k in legacy)
    assert sorted(k for k in manifest["header"]["buffers_in_state_dict"] if k not in ours) == legacy
    assert [k for k in ours if k not in published] == []
    assert {k: v for k, v in published.items() if k not in legacy} == ours
    # The embedding layer's text table is the LLM's embed_tokens, not a copy; lm_head is separate.
    assert model.embedding_layer.weight is model.lang_model.model.embed_tokens.weight
    assert model.lang_model.lm_head.weight is not model.lang_model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"] == FULL_SIZE_PARAMETERS
    # bf16 weights alone are ~24.7 GiB: the memory message must say more than that.
    assert 26 * 2**30 < memory_needed(FULL_SIZE_PARAMETERS, "bf16") < 30 * 2**30


def test_tiny_checkpoint_is_in_published_layout_and_loads_strictly(tiny_folder: Path, tiny) -> None:
    saved = torch.load(tiny_folder / "pytorch_model.bin", weights_only=True)
    assert {
        "lang_model.model.embed_tokens.weight",
        "embedding_layer.weight",
        "embedding_layer.figure_token_weight",
    } <= set(saved)
    assert any(k.startswith("embedding_layer.vision_encoder.to_patch_embedding.2") for k in saved)
    assert parameter_count(tiny.config) == sum(p.numel() for p in tiny.model.parameters())
    assert tiny.model.embedding_layer.weight is tiny.model.lang_model.model.embed_tokens.weight
    torch.testing.assert_close(tiny.model.lang_model.model.embed_tokens.weight, saved["embedding_layer.weight"])
    # The tokenizer gets <image>, </image>, <imageN> right after the text vocabulary, and LLaMA's forced ids.
    vocab = tiny.config.vocab_size
    ids = tiny.tokenizer.convert_tokens_to_ids(["<image>", "</image>", "<image0>", "<image15>"])
    assert ids == [vocab, vocab + 1, vocab + 2, vocab + 17]
    assert (tiny.tokenizer.pad_token_id, tiny.tokenizer.bos_token_id, tiny.tokenizer.eos_token_id) == (0, 1, 2)


def _copy(folder: Path, target: Path, edit) -> Path:
    shutil.copytree(folder, target)
    state = torch.load(target / "pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, target / "pytorch_model.bin")
    return target


def test_loader_accepts_the_legacy_buffers_and_nothing_else(tiny_folder: Path, tmp_path: Path) -> None:
    layers = RadFMConfig.from_dict(json.loads((tiny_folder / "radfm_config.json").read_text()))
    layers = int(layers.llama["num_hidden_layers"])

    def add_legacy(state: dict) -> None:  # what a transformers-4.28 checkpoint holds
        for n in range(layers):
            state[f"lang_model.model.layers.{n}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
        state["embedding_layer.bert_model.embeddings.position_ids"] = torch.arange(32)[None]

    legacy = _copy(tiny_folder, tmp_path / "legacy", add_legacy)
    assert load_radfm(legacy, dtype="fp32").model.lang_model.model.norm.weight.shape == (64,)

    stray = _copy(
        legacy, tmp_path / "stray", lambda s: s.__setitem__("embedding_layer.extra_head.weight", torch.ones(2))
    )
    with pytest.raises(RadFMLoadError, match="unexpected key.*embedding_layer.extra_head.weight"):
        load_radfm(stray, dtype="fp32")
    short = _copy(tiny_folder, tmp_path / "short", lambda s: s.pop("embedding_layer.fc.weight"))
    with pytest.raises(RadFMLoadError, match="missing key.*embedding_layer.fc.weight"):
        load_radfm(short, dtype="fp32")
    wrong = _copy(tiny_folder, tmp_path / "wrong", lambda s: s.__setitem__("embedding_layer.fc.bias", torch.ones(3)))
    with pytest.raises(RadFMLoadError, match=r"embedding_layer.fc.bias \(3,\)"):
        load_radfm(wrong, dtype="fp32")


def test_incomplete_folder_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RadFMLoadError, match="pytorch_model.bin.*missing"):
        load_radfm(tmp_path)
    with pytest.raises(RadFMLoadError, match="dtype 'int4'"):
        load_radfm(tmp_path, dtype="int4")


def test_stage_shapes(tiny, picture) -> None:
    model, cfg = tiny.model, tiny.config
    scan = image_to_tensor(picture("synpic46720.jpg"), cfg.vision.image_size)
    assert scan.shape == (3, 64, 64, 4) and 0.0 <= float(scan.min()) and float(scan.max()) <= 1.0
    vision_x = stack_images([scan, scan])
    assert vision_x.shape == (1, 2, 3, 64, 64, 4)
    patches = model.embedding_layer.vision_encoder(vision_x.flatten(0, 1))
    assert patches.shape == (2, 4 * 4 * 1, 48)  # 64/16 rows x 64/16 columns x 4/4 depth patches, dim 48
    latents = model.embedding_layer.perceiver(patches.reshape(1, 2, 16, 48))
    assert latents.shape == (1, 2, 4, 48)  # 4 latents per image
    visual = model.embedding_layer.visual_tokens(vision_x)
    assert visual.shape == (1, 8, 64)  # 2 images x 4 tokens, LLM hidden 64
    lang_x = encode_prompt(tiny, "Is the brain tissue ischemic?", 2)
    assert lang_x.shape[1] == 1 + 2 * (4 + 2) + 6
    embeds = model.embedding_layer(lang_x, vision_x)
    assert embeds.shape == (1, lang_x.shape[1], 64)
    # The k-th <imageK> position carries the k-th visual token; text positions carry the text table.
    first_visual = lang_x[0].tolist().index(cfg.vocab_size + 2)
    torch.testing.assert_close(embeds[0, first_visual], visual[0, 0])
    torch.testing.assert_close(embeds[0, 0], model.lang_model.model.embed_tokens.weight[1])
    out = model(lang_x, vision_x)
    assert out.logits.shape == (1, lang_x.shape[1], cfg.vocab_size)


def test_changing_the_image_changes_the_first_answer_token_logits(tiny, picture) -> None:
    size = tiny.config.vision.image_size
    lang_x = encode_prompt(tiny, "Is there atrophy of the brain?", 1)
    logits = []
    for name in ("synpic46720.jpg", "synpic51426.jpg"):
        scan = image_to_tensor(picture(name), size)
        with torch.no_grad():
            logits.append(tiny.model(lang_x, stack_images([scan])).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_prompt_with_more_image_tokens_than_images_is_refused(tiny, picture) -> None:
    lang_x = encode_prompt(tiny, "Compare these.", 2)
    scan = image_to_tensor(picture("synpic46720.jpg"), tiny.config.vision.image_size)
    with pytest.raises(ValueError, match="only 1 image"):
        tiny.model(lang_x, stack_images([scan]))


def test_generation_on_cpu_for_a_picture_and_a_volume(tiny, picture) -> None:
    size = tiny.config.vision.image_size
    scan = image_to_tensor(picture("synpic33378.jpg"), size)
    volume = volume_to_tensor(np.linspace(-1000, 1000, 40 * 30 * 10).reshape(40, 30, 10), size, hounsfield=True)
    assert volume.shape == (3, 64, 64, 12)
    text = answer(tiny, "Is this an image of the brain?", [scan, volume], max_new_tokens=4)
    words = text.split()
    assert 1 <= len(words) <= 4 and "<image" not in text
    assert all(tiny.tokenizer.convert_tokens_to_ids(w) < tiny.config.vocab_size for w in words)
