"""Tiny random-weight KEP checkpoints through the real loader, tokenizer, transform, tiling and classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medagent.specialists.pathology.infer import KEPClassifier
from medagent.specialists.pathology.labels import BUILTIN, LabelError, resolve
from medagent.specialists.pathology.load import CheckpointError, load_kep
from medagent.specialists.pathology.preprocess import PathologyInputError, TilingOptions, open_rgb


@pytest.mark.parametrize("variant", ["kep32", "kep16", "ctp", "keep"])
def test_each_variant_loads_strictly_and_classifies_a_tile(
    variant, tmp_path, tokenizer_dir, tiles_dir, checkpoint_factory
):
    folder = checkpoint_factory(tmp_path / variant, tokenizer_dir, variant)
    loaded = load_kep(folder)
    assert loaded.config.variant == variant
    if variant == "keep":
        assert type(loaded.model).__name__ == "KEEP" and loaded.ignored_keys == []  # released flat, no knowledge BERT
    else:
        # The training checkpoint's knowledge BERT is accepted and left out of the model.
        assert loaded.ignored_keys and all(k.startswith("knowledge.") for k in loaded.ignored_keys)
    result = KEPClassifier(loaded).classify(tiles_dir / "tumor.png", BUILTIN["crc"])
    assert result.labels == BUILTIN["crc"].names
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert not result.tiled and result.tiles_scored == 1


def test_weights_saved_are_the_weights_used(kep32_dir, tiles_dir):
    """Reloading gives bit-identical parameters, so predictions come from the file and not a fresh init."""
    first, second = load_kep(kep32_dir), load_kep(kep32_dir)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    saved = torch.load(kep32_dir / "pytorch_model.bin", weights_only=True)["state_dict"]
    assert torch.equal(saved["visual.proj"], first.model.visual.proj.detach())
    labels = resolve(["colon adenocarcinoma", "benign colonic tissue", "adipose tissue"])
    p1 = KEPClassifier(first).classify(tiles_dir / "tumor.png", labels).probabilities
    p2 = KEPClassifier(second).classify(tiles_dir / "tumor.png", labels).probabilities
    assert p1 == pytest.approx(p2, abs=1e-6)


def test_large_image_is_tiled_skipping_glass_and_keeping_top_tiles(kep32_dir, tiles_dir):
    classifier = KEPClassifier(load_kep(kep32_dir))
    options = TilingOptions(tile_size=200, max_tiles=64, batch_size=8)
    result = classifier.classify(tiles_dir / "slide.png", BUILTIN["general"], options, top_tiles=3)
    assert result.tiled and result.grid_tiles == 48  # 8 x 6 tiles of 200 px
    assert result.tiles_scored == 24  # the glass half is not scored
    assert len(result.top_tiles) == 3
    for tile in result.top_tiles:
        assert tile.box[0] >= 800 and tile.image.size == (200, 200)
    capped = classifier.classify(tiles_dir / "slide.png", BUILTIN["general"], TilingOptions(200, max_tiles=5))
    assert capped.tiles_scored == 5


def test_grey_sixteen_bit_and_alpha_images_are_handled(kep32_dir, tiles_dir, tmp_path):
    classifier = KEPClassifier(load_kep(kep32_dir))
    rgb = Image.open(tiles_dir / "stroma.png").convert("RGB")
    opaque = rgb.copy()
    opaque.putalpha(255)
    opaque.save(tmp_path / "opaque.png")
    assert open_rgb(tmp_path / "opaque.png").mode == "RGB"
    same = classifier.classify(tmp_path / "opaque.png", BUILTIN["crc"]).probabilities
    assert same == pytest.approx(classifier.classify(rgb, BUILTIN["crc"]).probabilities, abs=1e-6)
    # Fully transparent pixels are glass: they become white, not black.
    clear = rgb.copy()
    clear.putalpha(0)
    clear.save(tmp_path / "clear.png")
    assert np.asarray(open_rgb(tmp_path / "clear.png")).min() == 255
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 200).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    decoded = open_rgb(tmp_path / "grey16.png")
    assert decoded.mode == "RGB" and np.asarray(decoded).max() == 255 and np.asarray(decoded).min() < 128
    assert len(classifier.classify(decoded, BUILTIN["lung"]).probabilities) == 3


def test_bad_images_get_clear_messages(tmp_path, tiles_dir):
    text = tmp_path / "report.png"
    text.write_text("not an image")
    with pytest.raises(PathologyInputError, match="report.png: not a readable image"):
        open_rgb(text)
    with pytest.raises(PathologyInputError, match=r"1600x1200 pixels exceeds the limit of 1,000,000"):
        open_rgb(tiles_dir / "slide.png", max_pixels=1_000_000)
    Image.new("RGB", (4, 4)).save(tmp_path / "dot.png")
    with pytest.raises(PathologyInputError, match="too small"):
        open_rgb(tmp_path / "dot.png")


def test_label_choices():
    with pytest.raises(LabelError, match="at least two"):
        resolve([])
    with pytest.raises(LabelError, match="at least two"):
        resolve(["Adenocarcinoma", " adenocarcinoma ", ""])
    with pytest.raises(LabelError, match="unknown set 'kidney'"):
        resolve(None, "kidney")
    user = resolve(["lung adenocarcinoma", "sarcoidosis"])
    assert user.names == ["lung adenocarcinoma", "sarcoidosis"]
    # A label that a built-in set knows borrows its synonyms for the prompt ensemble.
    assert len(user.prompts()[0]) == 2 * len(user.prompts()[1])
    assert resolve(None, None).name == "general"


def test_mismatched_weights_and_missing_tokenizer_are_reported(kep32_dir, tmp_path):
    state = torch.load(kep32_dir / "pytorch_model.bin", weights_only=True)["state_dict"]
    del state["visual.ln_post.weight"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in kep32_dir.iterdir():
        if item.name != "pytorch_model.bin":
            (broken / item.name).write_bytes(item.read_bytes())
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. visual.ln_post.weight\)"):
        load_kep(broken)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pytorch_model.bin").write_bytes((kep32_dir / "pytorch_model.bin").read_bytes())
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_kep(bare)
    with pytest.raises(CheckpointError, match="configured variant 'kep16' but the weights are a kep32"):
        load_kep(kep32_dir, variant="kep16")
