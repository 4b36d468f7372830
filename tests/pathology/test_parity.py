"""KEP-32 parity with the authors' code: tests/data/oracles/kep (made by KEP's own classes, see its README).

The fixture's flat state_dict goes through the real `load_kep`; every stage the README lists, both images and all
three prompts, at float32 atol = rtol = 1e-5; plus medagent's preprocessing, tokenizer paths and classifier.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

ORACLE = Path(__file__).resolve().parent.parent / "data" / "oracles" / "kep"
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    from transformers import BertTokenizerFast

    from medagent.specialists.pathology.load import load_kep

    vocab = tmp_path_factory.mktemp("kep_vocab")
    shutil.copyfile(ORACLE / "vocab.txt", vocab / "vocab.txt")
    folder = tmp_path_factory.mktemp("kep_oracle")
    shutil.copyfile(ORACLE / "state_dict.pt", folder / "pytorch_model.bin")
    config = json.loads((ORACLE / "oracle_config.json").read_text(encoding="utf-8"))["medagent_kep_config_json"]
    (folder / "kep_config.json").write_text(json.dumps(config), encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(vocab)).save_pretrained(folder)
    result = load_kep(folder)
    assert result.config.variant == "kep32"
    assert result.ignored_keys == []
    return result


def close(ours: torch.Tensor, expected: torch.Tensor, stage: str) -> None:
    diff = float((ours - expected).abs().max()) if ours.shape == expected.shape else float("nan")
    torch.testing.assert_close(ours, expected, **TOL, msg=lambda m: f"{stage}: {diff}\n{m}")


def test_image_stages(loaded, oracle) -> None:
    inputs, outputs = oracle
    model, pixels = loaded.model, inputs["pixels"]
    with torch.no_grad():
        close(model.visual(pixels), outputs["visual_out"], "visual_out")
        close(model.encode_image(pixels), outputs["image_features"], "image_features")
        close(F.normalize(model.encode_image(pixels), dim=-1), outputs["image_features_norm"], "image_features_norm")


def test_text_stages(loaded, oracle) -> None:
    inputs, outputs = oracle
    model, ids, mask = loaded.model, inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        bert = model.text.bert_model(input_ids=ids, attention_mask=mask)
        close(bert.last_hidden_state, outputs["bert_last_hidden"], "bert_last_hidden")
        close(bert.pooler_output, outputs["bert_pooler"], "bert_pooler")
        close(model.text(ids, mask), outputs["text_mlp_out"], "text_mlp_out")  # PATH_BERT.encode_text
        close(model.encode_text(ids, mask), outputs["text_features"], "text_features")  # KEP.encode_text: unit-norm


def test_joint_stages(loaded, oracle) -> None:
    inputs, outputs = oracle
    with torch.no_grad():
        image, text, scale = loaded.model(inputs["pixels"], inputs["input_ids"], inputs["attention_mask"])
    close(image, outputs["forward_image_features"], "forward_image_features")
    close(text, outputs["forward_text_features"], "forward_text_features")
    close(scale, outputs["logit_scale"].exp(), "logit_scale")
    close(image @ text.T, outputs["cosine"], "cosine")
    close(scale * image @ text.T, outputs["logits_per_image"], "logits_per_image")
    close(scale * text @ image.T, outputs["logits_per_text"], "logits_per_text")


def test_tokenizer_gives_the_fixture_ids(loaded, oracle) -> None:
    inputs, outputs = oracle
    batch = loaded.tokenizer(inputs["prompts"], padding="max_length", max_length=16, return_tensors="pt")
    assert torch.equal(batch["input_ids"], inputs["input_ids"])
    assert torch.equal(batch["attention_mask"], inputs["attention_mask"])
    longest = loaded.tokenizer(inputs["prompts"], padding=True, return_tensors="pt")
    with torch.no_grad():
        text = loaded.model.encode_text(longest["input_ids"], longest["attention_mask"])
    close(text, outputs["text_features_pad_longest"], "text_features_pad_longest")


def test_vocab_txt_only_tokenizer(tmp_path: Path, oracle) -> None:
    """A folder with only vocab.txt: all 128 tokens, the fixture's ids (transformers 5 once gave 5 tokens, all [UNK])."""
    from medagent.specialists.pathology.load import load_tokenizer

    inputs, _ = oracle
    shutil.copyfile(ORACLE / "vocab.txt", tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path, max_length=16)
    assert len(tokenizer) == 128
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "w127"]) == [
        0,
        1,
        2,
        3,
        4,
        127,
    ]
    batch = tokenizer(inputs["prompts"], padding="max_length", max_length=16, return_tensors="pt")
    assert torch.equal(batch["input_ids"], inputs["input_ids"])
    assert tokenizer("W17")["input_ids"] == [2, 17, 3]  # lower-cased, as KEP's PubMedBERT tokenizer


def test_preprocessing(oracle) -> None:
    """kep32 normalises with OpenAI CLIP mean/std as the authors' transform; ImageNet stats (CTP) stay available."""
    from medagent.specialists.pathology.preprocess import kep_transform

    inputs, _ = oracle
    for k, raw in enumerate(inputs["raw_images_hwc_uint8"]):
        image = Image.fromarray(raw.numpy())
        close(kep_transform(64, "kep32")(image), inputs["pixels_openai"][k], f"pixels_openai[{k}]")
        close(kep_transform(64, "ctp")(image), inputs["pixels_imagenet"][k], f"pixels_imagenet[{k}]")
        close(kep_transform(64)(image), inputs["pixels_imagenet"][k], f"pixels_imagenet[{k}] (no variant)")


def test_classifier_end_to_end(loaded, oracle) -> None:
    """KEPClassifier from raw images and prompts (its transform, tokenizer, padding) gives the authors' logits."""
    from medagent.specialists.pathology.infer import KEPClassifier
    from medagent.specialists.pathology.labels import Label, LabelSet

    inputs, outputs = oracle
    classifier = KEPClassifier(loaded)
    labels = LabelSet("oracle", tuple(Label(p) for p in inputs["prompts"]), templates=("{}",))
    text = classifier.label_embeddings(labels)
    close(text, outputs["text_features"], "label_embeddings")
    crops = [Image.fromarray(raw.numpy()) for raw in inputs["raw_images_hwc_uint8"]]
    close(classifier.tile_logits(crops, text), outputs["logits_per_image"], "tile_logits")
    result = classifier.classify(crops[0], labels)
    expected = outputs["logits_per_image"][0].softmax(dim=-1)
    torch.testing.assert_close(torch.tensor(result.probabilities), expected, **TOL)
