"""MedVInT-TD's architecture and loader: the published layout on the meta device, the tiny model through the strict
loader (both PEFT namings, the LLaMA base from its own folder), multiple choice on a committed slice."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medagent.specialists.medvint.infer import answer_choices, choice_prompt, open_prompt
from medagent.specialists.medvint.load import MedVInTLoadError, load_medvint
from medagent.specialists.medvint.model import MedVInT, MedVInTConfig, vision_trunk
from medagent.specialists.medvint.preprocess import image_to_tensor
from medagent.specialists.medvint.tiny import build_tiny

from .conftest import SENTENCES


def test_the_published_trunk_gives_1024_channels_at_stride_16_and_the_published_keys():
    from accelerate import init_empty_weights

    config = MedVInTConfig()
    with torch.device("meta"):
        trunk = vision_trunk(config)
        assert [type(c).__name__ for c in trunk][:10] == ["Conv2d", "BatchNorm2d", "ReLU"] * 3 + ["AvgPool2d"]
        assert tuple(trunk(torch.empty(2, 3, 512, 512)).shape) == (2, 1024, 32, 32)
        assert tuple(trunk(torch.empty(1, 3, 224, 224)).shape) == (1, 1024, 14, 14)
    with init_empty_weights(include_buffers=False):
        model = MedVInT(config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes["vision_model.0.weight"] == [32, 3, 3, 3]  # conv1 of the 3-conv stem
    assert shapes["vision_model.7.weight"] == [64]  # bn3
    assert shapes["vision_model.12.5.conv3.weight"] == [1024, 256, 1, 1]  # last block of layer3 (6 blocks)
    assert not any(k.startswith("vision_model.13") for k in shapes)  # layer4 and the attention pool are gone
    assert shapes["query_embed.weight"] == [32, 1024]
    assert shapes["decoder.layers.11.linear1.weight"] == [1024, 1024] and "decoder.layers.12.norm1.weight" not in shapes
    assert shapes["decoder.layers.0.multihead_attn.in_proj_weight"] == [3072, 1024]
    assert shapes["decoder.norm.weight"] == [1024]
    assert shapes["fc_l1.weight"] == [1024, 1024] and shapes["fc_l2.weight"] == [4096, 1024]
    lora = "llamacasual.base_model.model.model.layers.31.self_attn.q_proj.lora_A.default.weight"
    assert shapes[lora] == [8, 4096]
    assert shapes["llamacasual.base_model.model.lm_head.weight"] == [32000, 4096]
    from medagent.tools.radfm import MEDVINT_PARAMETERS

    assert sum(p.numel() for p in model.parameters()) == MEDVINT_PARAMETERS  # what `medagent doctor` sizes memory by


def test_the_tiny_model_loads_strictly_and_a_renamed_or_missing_key_is_named(tiny, tiny_folder: Path, tmp_path: Path):
    assert tiny.base == "checkpoint" and tiny.renamed_keys > 0  # released naming, renamed to the installed PEFT's
    assert tiny.config.decoder_layers == 2 and MedVInTConfig().decoder_layers == 12
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    state = torch.load(broken / "pytorch_model.bin", weights_only=True)
    state["decoder.layers.0.ffn.weight"] = state.pop("decoder.layers.0.linear1.weight")
    del state["fc_l1.bias"]
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(MedVInTLoadError) as failed:
        load_medvint(broken, dtype="fp32")
    message = str(failed.value)
    assert "decoder.layers.0.linear1.weight" in message and "fc_l1.bias" in message  # missing
    assert "decoder.layers.0.ffn.weight" in message  # unexpected
    assert "not yet checked against released weights" in message


def test_both_peft_namings_and_a_base_from_llama_path_give_identical_outputs(tiny, tmp_path: Path, slice_pixels):
    installed = build_tiny(tmp_path / "installed", SENTENCES, seed=0, peft_naming="installed")
    split = build_tiny(tmp_path / "split", SENTENCES, seed=0, base_folder=tmp_path / "llama")
    released_keys = set(torch.load(tiny.weights, weights_only=True))
    installed_keys = set(torch.load(installed / "pytorch_model.bin", weights_only=True))
    q_lora = "llamacasual.base_model.model.model.layers.0.self_attn.q_proj.lora_A"
    assert f"{q_lora}.weight" in released_keys and f"{q_lora}.default.weight" in installed_keys
    assert f"{q_lora}.weight" not in installed_keys
    with pytest.raises(MedVInTLoadError, match="llama_path"):
        load_medvint(split, dtype="fp32")
    from_base = load_medvint(split, tmp_path / "llama", dtype="fp32")
    assert from_base.base == str(tmp_path / "llama")
    pixels = image_to_tensor(slice_pixels)[None]
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.inference_mode():
        reference = tiny.model(ids, pixels)
        for other in (load_medvint(installed, dtype="fp32"), from_base):
            assert torch.equal(other.model(ids, pixels), reference)
        # The LoRA matrices matter: without them the same weights answer differently.
        for name, parameter in from_base.model.named_parameters():
            if ".lora_B." in name:
                parameter.zero_()
        assert not torch.allclose(from_base.model(ids, pixels), reference)


def test_multiple_choice_on_a_committed_slice_returns_one_of_the_choices(tiny, slice_pixels):
    assert choice_prompt("Which organ?", ["liver", "spleen"]) == "Question: Which organ?Choices: A:liver B:spleenThe Answer is:"
    assert open_prompt("  Is there a mass?\n") == "Question: Is there a mass?The Answer is:"
    pixels = image_to_tensor(slice_pixels)
    assert tuple(pixels.shape) == (3, 512, 512)
    choices = ["chest", "upper abdomen", "pelvis", "head"]
    result = answer_choices(tiny, "Which region of the body does this axial CT slice show?", choices, pixels)
    assert result.letter in "ABCD" and result.choice == choices["ABCD".index(result.letter)]
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert result.probability == max(result.probabilities)
    assert 0.0 <= result.similarity <= 1.0
    with pytest.raises(ValueError, match="2 to 8"):
        choice_prompt("Which?", ["only one"])


def test_a_volume_is_refused_by_the_preprocessing():
    with pytest.raises(ValueError, match="3D volume"):
        image_to_tensor(np.zeros((40, 40, 12), dtype=np.float32))
