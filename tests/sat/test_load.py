"""Tiny SAT checkpoints in the published layout go through the very loader: strict, and every bad key named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from medagent.specialists.sat.load import (
    LAYOUT_NOTE,
    SATLoadError,
    doctor_lines,
    load_sat,
    load_segmenter,
    load_text_encoder,
    read_configs,
)

SEGMENTER, TEXT = "sat_tiny.pth", "sat_tiny_text_encoder.pth"


def rewrite(folder: Path, name: str, change) -> None:  # noqa: ANN001 - a function on the state_dict
    """Load a checkpoint's `model_state_dict`, let `change` edit it, save it back in place."""
    path = folder / name
    raw = torch.load(path, weights_only=True)
    change(raw["model_state_dict"])
    torch.save(raw, path)


@pytest.fixture
def copy(tiny_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "sat"))


def test_the_tiny_folder_loads_strictly_with_the_published_quirks_mapped(tiny_dir: Path) -> None:
    raw = torch.load(tiny_dir / SEGMENTER, weights_only=True)["model_state_dict"]
    assert all(k.startswith("module.") for k in raw)
    assert "module.backbone.encoder.stages.0.0.convs.0.all_modules.1.weight" in raw
    assert "module.mid_mask_embed_proj.2.2.bias" in raw

    sat = load_sat(tiny_dir)
    network, text = sat.reports
    assert network.dropped == [k[7:] for k in raw if k.startswith("module.mid_mask_embed_proj.")]
    assert len(network.dropped) == 12
    assert network.folded == sum(".all_modules." in k for k in raw) == 88  # 22 conv blocks x (conv, norm) x (w, b)
    assert text.dropped == ["text_tower.biolord.embeddings.position_ids"]
    # The loaded values are the file's, under the folded names.
    weight = raw["module.backbone.decoder.stages.4.convs.1.all_modules.0.weight"]
    assert torch.equal(sat.segmenter.backbone.decoder.stages[4].convs[1].conv.weight, weight)
    assert not sat.segmenter.training and not sat.text_encoder.training
    config, text_config = read_configs(tiny_dir)
    assert sat.segmenter.config == config and not config.deep_supervision and config.features == (4, 4, 8, 8, 16, 16)


def test_a_renamed_key_is_named_as_missing_and_as_unexpected(copy: Path) -> None:
    def rename(state: dict) -> None:
        state["module.transformer_decoder.final_norm.weight"] = state.pop("module.transformer_decoder.norm.weight")

    rewrite(copy, SEGMENTER, rename)
    with pytest.raises(SATLoadError) as error:
        load_sat(copy)
    message = str(error.value)
    assert "1 missing: transformer_decoder.norm.weight" in message
    assert "1 unexpected: transformer_decoder.final_norm.weight" in message
    assert SEGMENTER in message and "not yet checked against released weights" in message


def test_every_missing_key_is_named_in_one_error(copy: Path) -> None:
    gone = [
        "module.text_tower.biolord.pooler.dense.bias",
        "module.projection_layer.2.weight",
        "module.modality_embed.weight",
    ]
    rewrite(copy, TEXT, lambda state: [state.pop(k) for k in gone])
    with pytest.raises(SATLoadError, match="3 missing: ") as error:
        load_text_encoder(copy / TEXT, read_configs(copy)[1])
    assert all(k.removeprefix("module.") in str(error.value) for k in gone)


def test_a_misshaped_key_is_named_with_both_shapes(copy: Path) -> None:
    rewrite(copy, SEGMENTER, lambda state: state.update({"module.mask_embed_proj.2.bias": torch.zeros(5)}))
    with pytest.raises(SATLoadError, match=r"mask_embed_proj\.2\.bias \[5\] != \[4\]"):
        load_segmenter(copy / SEGMENTER, read_configs(copy)[0])


def test_checkpoints_without_the_module_prefix_load_the_same(tiny_dir: Path, copy: Path) -> None:
    for name in (SEGMENTER, TEXT):
        rewrite(
            copy, name, lambda state: [state.__setitem__(k.removeprefix("module."), state.pop(k)) for k in list(state)]
        )
    plain, published = load_sat(copy), load_sat(tiny_dir)
    for a, b in zip(plain.segmenter.state_dict().values(), published.segmenter.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain.queries(["liver"], "ct"), published.queries(["liver"], "ct"))


def test_knowledge_pretraining_leftovers_are_dropped_and_reported(copy: Path) -> None:
    extra = {"module.atlas_tower.encoder.0.weight": torch.zeros(3, 3), "module.temperature": torch.tensor(0.07)}
    rewrite(copy, TEXT, lambda state: state.update(extra))
    _, report = load_text_encoder(copy / TEXT, read_configs(copy)[1])
    assert {k.removeprefix("module.") for k in extra} <= set(report.dropped)


def test_any_other_extra_key_is_refused(copy: Path) -> None:
    rewrite(copy, TEXT, lambda state: state.update({"module.text_tower.biolord.extra.weight": torch.zeros(2)}))
    with pytest.raises(SATLoadError, match="1 unexpected: text_tower.biolord.extra.weight"):
        load_text_encoder(copy / TEXT, read_configs(copy)[1])


def test_twins_that_disagree_are_refused(copy: Path) -> None:
    key = "module.backbone.encoder.stages.1.0.convs.0.all_modules.1.bias"
    rewrite(copy, SEGMENTER, lambda state: state.update({key: state[key] + 1}))
    with pytest.raises(SATLoadError, match="all_modules.1.bias and its twin .*convs.0.norm.bias must be one tensor"):
        load_segmenter(copy / SEGMENTER, read_configs(copy)[0])


def test_a_file_with_only_one_name_per_conv_loads(tiny_dir: Path, copy: Path) -> None:
    rewrite(copy, SEGMENTER, lambda state: [state.pop(k) for k in list(state) if ".all_modules." in k])
    model, report = load_segmenter(copy / SEGMENTER, read_configs(copy)[0])
    assert report.folded == 0
    reference, _ = load_segmenter(tiny_dir / SEGMENTER, read_configs(tiny_dir)[0])
    assert torch.equal(model.backbone.encoder.stages[5][0].convs[1].norm.weight,
                       reference.backbone.encoder.stages[5][0].convs[1].norm.weight)  # fmt: skip


def test_a_folder_without_the_text_encoder_says_what_is_missing(copy: Path) -> None:
    (copy / TEXT).unlink()
    with pytest.raises(SATLoadError, match=r"lacks the text encoder checkpoint \(.*module\.text_tower"):
        load_sat(copy)


def test_a_folder_without_the_tokenizer_says_where_it_comes_from(copy: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy / name).unlink()
    with pytest.raises(SATLoadError, match="BioLORD-2023-C"):
        load_sat(copy)


def test_doctor_says_what_a_folder_lacks_and_that_the_layout_is_unchecked(tiny_dir: Path, copy: Path) -> None:
    assert doctor_lines(tiny_dir) == [f"sat: {LAYOUT_NOTE}"]
    (copy / SEGMENTER).unlink()
    lines = doctor_lines(copy)
    assert len(lines) == 2 and "lacks the SAT network checkpoint (HF zzh99/SAT Nano/ or Pro/" in lines[0]
    assert "not yet checked against released weights" in lines[-1]
