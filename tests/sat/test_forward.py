"""The tiny SAT, loaded from its published-layout folder, segments a small volume: one logit map per text prompt."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medagent.specialists.sat.load import load_sat
from medagent.specialists.sat.model import SATSegmenter, position_encoding_3d, tiny_config
from medagent.specialists.sat.text import tokenize_prompts


def test_two_prompts_give_two_logit_maps_the_size_of_the_volume(tiny_dir: Path) -> None:
    sat = load_sat(tiny_dir)
    queries = sat.queries(["liver", "left kidney"], "ct")
    assert queries.shape == (2, 32)
    volume = torch.randn(2, 1, 64, 64, 32)  # grey (B, 1, H, W, D): repeated to 3 channels inside
    with torch.no_grad():
        logits = sat.segmenter(volume, queries)
    assert logits.shape == (2, 2, 64, 64, 32) and torch.isfinite(logits).all()
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # each prompt its own map
    with torch.no_grad():
        three = sat.segmenter(volume.expand(-1, 3, -1, -1, -1), queries)
    assert torch.allclose(three, logits)


def test_the_modality_changes_the_query(tiny_dir: Path) -> None:
    sat = load_sat(tiny_dir)
    ct, mri = sat.queries(["liver"], "ct"), sat.queries(["liver"], "mri")
    difference = mri - ct  # added after the MLP: the difference is exactly the two embedding rows
    table = sat.text_encoder.modality_embed.weight
    assert torch.allclose(difference[0], table[1] - table[0], atol=1e-6)


def test_prompts_are_wrapped_in_cls_and_sep_zero_padded_and_masked(tiny_dir: Path) -> None:
    sat = load_sat(tiny_dir)
    ids, mask = tokenize_prompts(sat.tokenizer, ["Liver", "left kidney cyst"])
    cls, sep = sat.tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    assert ids.shape == (2, 5) and ids[0, 0] == ids[1, 0] == cls
    assert ids[0, 2] == sep and ids[0, 3:].tolist() == [0, 0] and ids[1, 4] == sep
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    long_ids, _ = tokenize_prompts(sat.tokenizer, ["liver " * 40], max_length=8)
    assert long_ids.shape == (1, 8) and long_ids[0, -1] == sep


def test_a_volume_that_is_not_a_multiple_of_32_is_refused_with_the_reason() -> None:
    model = SATSegmenter(tiny_config()).eval()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.zeros(1, 3, 64, 64, 20), torch.zeros(2, 32))


def test_deep_supervision_gives_four_scales() -> None:
    torch.manual_seed(0)
    model = SATSegmenter(tiny_config(deep_supervision=True)).eval()
    with torch.no_grad():
        outputs = model.deep_supervision_logits(torch.randn(1, 3, 64, 32, 32), torch.randn(3, 32))
    assert [tuple(o.shape) for o in outputs] == [
        (1, 3, 64, 32, 32),
        (1, 3, 32, 16, 16),
        (1, 3, 16, 8, 8),
        (1, 3, 8, 4, 4),
    ]


def test_the_position_code_is_sine_cosine_per_axis() -> None:
    code = position_encoding_3d((3, 2, 2), 768)  # 256 channels per axis: h, then w, then d
    assert code.shape == (3, 2, 2, 768)
    assert torch.equal(code[0, 0, 0, 0::2], torch.zeros(384)) and torch.equal(code[0, 0, 0, 1::2], torch.ones(384))
    assert math.isclose(code[2, 0, 0, 0].item(), math.sin(2.0), abs_tol=1e-6)  # h = 2, first frequency 1
    assert math.isclose(code[0, 1, 0, 257].item(), math.cos(1.0), abs_tol=1e-6)  # w = 1, cosine
    assert math.isclose(code[0, 0, 1, 514].item(), math.sin(1 / 10000 ** (2 / 256)), abs_tol=1e-6)  # d, 2nd freq
    assert torch.equal(code[1, :, :, :256], code[1, 0, 0, :256].expand(2, 2, 256))  # the h part ignores w and d


def test_the_position_code_matches_the_positional_encodings_package() -> None:
    package = pytest.importorskip("positional_encodings.torch_encodings", reason="positional-encodings not installed")
    for grid, channels in (((9, 9, 3), 768), ((2, 3, 1), 32)):
        reference = package.PositionalEncoding3D(channels)(torch.zeros(1, *grid, channels))[0]
        assert torch.allclose(position_encoding_3d(grid, channels), reference, atol=1e-6)
