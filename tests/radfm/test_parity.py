"""RadFM parity with the authors' code: tests/data/oracles/radfm (made by RadFM's own model classes, see its README).

The fixture's state_dict is the published `pytorch_model.bin` key layout at medagent's tiny dims, so it goes through
the real `load_radfm`; every stage the README lists is compared at float32 atol = rtol = 1e-5, for every case, and
the 200-token greedy streams must equal the authors' `generate` (whose output starts with its bos 0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

ORACLE = Path(__file__).resolve().parent.parent / "data" / "oracles" / "radfm"
CASES = ("vol3d", "img2d", "vol3d_full", "two_images", "batch2")
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    from medagent.specialists.radfm.load import load_radfm
    from medagent.specialists.radfm.tiny import tiny_config, word_tokenizer

    folder = tmp_path_factory.mktemp("radfm_oracle")
    shutil.copyfile(ORACLE / "state_dict.pt", folder / "pytorch_model.bin")
    config = json.loads((ORACLE / "oracle_config.json").read_text(encoding="utf-8"))["medagent_radfm_config_json"]
    assert config == tiny_config(96).to_dict()
    (folder / "radfm_config.json").write_text(json.dumps(config), encoding="utf-8")
    word_tokenizer([" ".join(f"w{i}" for i in range(93))]).save_pretrained(folder)
    return load_radfm(folder, dtype="fp32", device="cpu")


def test_fixture_ids_are_medagents_image_tokens(bundle, oracle) -> None:
    """The prompt layout: medagent's placeholders tokenize to the ids the oracle's prompts use."""
    from medagent.specialists.radfm.preprocess import image_placeholders

    inputs, _ = oracle
    tokens = bundle.config.perceiver.num_latents
    one = bundle.tokenizer(image_placeholders(1, tokens), add_special_tokens=False)["input_ids"]
    assert one == inputs["vol3d"]["lang_x"][0, 1:7].tolist()
    two = bundle.tokenizer(image_placeholders(2, tokens), add_special_tokens=False)["input_ids"]
    row = inputs["two_images"]["lang_x"][0].tolist()
    assert two == row[1:7] + row[9:15]


def test_2d_picture_layout(oracle) -> None:
    """A 2D picture becomes (3, H, W, 4) with the slice repeated, as the authors' nearest interpolation.

    medagent min-max scales float pictures (8-bit ones are divided by 255, as ToTensor); undo that to compare layout.
    """
    from medagent.specialists.radfm.preprocess import image_to_tensor, stack_images

    inputs, _ = oracle
    raw = inputs["img2d"]["raw_image_chw"]
    ours = stack_images([image_to_tensor(raw.permute(1, 2, 0).numpy(), size=64)])
    low, high = raw.min(), raw.max()
    expected = (inputs["img2d"]["vision_x"] - low) / (high - low)
    torch.testing.assert_close(ours, expected, **TOL)


def _stages(bundle, vision_x: torch.Tensor, lang_x: torch.Tensor) -> dict[str, torch.Tensor]:
    model = bundle.model
    layer = model.embedding_layer
    b, s = vision_x.shape[:2]
    x = vision_x.flatten(0, 1)
    p, pf = layer.vision_encoder.cfg.patch_size, layer.vision_encoder.cfg.frame_patch_size
    vit = layer.vision_encoder(x)
    embeds = layer(lang_x, vision_x)
    hidden = model.lang_model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
    pos = layer.vision_encoder.pos_embedding(x.shape[-3] // p, x.shape[-2] // p, x.shape[-1] // pf)
    return {
        "patch_embed": layer.vision_encoder.to_patch_embedding(x),
        "pos_embedding": pos.expand(b * s, -1, -1),
        "vit_out": vit,
        "perceiver_out": layer.perceiver(vit.reshape(b, s, vit.shape[1], -1)),
        "visual_tokens": layer.visual_tokens(vision_x),
        "inputs_embeds": embeds,
        "hidden_states": torch.stack([hidden[0], hidden[1], hidden[-1]]),
        "logits": model(lang_x, vision_x).logits,
    }


@pytest.mark.parametrize("case", CASES)
def test_every_stage_matches(bundle, oracle, case: str) -> None:
    inputs, outputs = oracle
    with torch.no_grad():
        ours = _stages(bundle, inputs[case]["vision_x"], inputs[case]["lang_x"])
    for stage, tensor in ours.items():
        expected = outputs[case][stage]
        diff = float((tensor - expected).abs().max()) if tensor.shape == expected.shape else float("nan")
        torch.testing.assert_close(tensor, expected, **TOL, msg=lambda m, st=stage, df=diff: f"{case}/{st}: {df}\n{m}")


@pytest.mark.parametrize("case", CASES)
def test_generation_matches(bundle, oracle, case: str) -> None:
    inputs, outputs = oracle
    lang_x, vision_x = inputs[case]["lang_x"], inputs[case]["vision_x"]
    model = bundle.model
    assert torch.equal(model.generate(lang_x, vision_x, max_new_tokens=6), outputs[case]["greedy_ids"])
    stream = model.generate(lang_x, vision_x, max_new_tokens=200)
    expected = outputs[case]["generate_ids"][:, 1:]  # the authors' output starts with their config's bos id 0
    assert stream.shape == expected.shape
    same = stream == expected
    first = [int((~row).nonzero()[0]) if not row.all() else None for row in same]
    assert same.all(), f"{case}: 200-token stream first differs at step {first}"


def test_training_loss_matches(bundle, oracle) -> None:
    inputs, outputs = oracle
    case = outputs["vol3d"]
    with torch.no_grad():
        loss = bundle.model(
            inputs["vol3d"]["lang_x"], inputs["vol3d"]["vision_x"], labels=case["train_forward_labels"]
        ).loss
    torch.testing.assert_close(loss, case["train_forward_loss"], **TOL)


def test_position_indices_match_the_authors(bundle, oracle) -> None:
    """The rows of each table the oracle fed its position embedding, read back from medagent's output."""
    inputs, outputs = oracle
    table = bundle.model.embedding_layer.vision_encoder.pos_embedding
    for case in CASES:
        depth = inputs[case]["vision_x"].shape[-1] // 4
        deps = table(4, 4, depth).reshape(4, 4, depth, -1)[0, 0, :, -table.dep_embed.embedding_dim :]
        expected = table.dep_embed.weight[outputs[case]["pos_index_depth"]]
        torch.testing.assert_close(deps, expected, atol=0, rtol=0)
        assert table.indices(depth, 4).tolist() == outputs[case]["pos_index_depth"].tolist()
        assert table.indices(4, 4).tolist() == outputs[case]["pos_index_rows"].tolist()
        assert table.indices(4, 4).tolist() == outputs[case]["pos_index_cols"].tolist()


def test_full_size_position_rows() -> None:
    """At 512 px / 512 frames (128 depth slots): a 2D image reads depth row 127, a 64-slice volume 7, 15, .., 127."""
    from medagent.specialists.radfm.model import PositionEmbeddingLearned3d

    assert PositionEmbeddingLearned3d.indices(1, 128).tolist() == [127]
    assert PositionEmbeddingLearned3d.indices(16, 128).tolist() == list(range(7, 128, 8))
    assert PositionEmbeddingLearned3d.indices(16, 16).tolist() == list(range(16))
    assert PositionEmbeddingLearned3d.indices(8, 16).tolist() == list(range(1, 16, 2))
