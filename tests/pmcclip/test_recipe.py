"""Round trip: the smoke recipe trains a tiny PMC-CLIP on eight synthetic picture-caption pairs, the specialist's
strict loader reads the result, and each picture ranks its own caption first among the eight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.pmcclip.load import load_pmcclip
from medagent.tools.errors import ConfigError
from medagent.training.config import load_config
from medagent.training.pmcclip.recipe import main, mask_tokens, own_caption_ranks, read_pairs

SMOKE = Path(__file__).resolve().parents[2] / "training" / "pmcclip" / "configs" / "smoke.yaml"


# Seeds 0-5 were checked by hand when smoke.yaml was set (8/8 trained and 1/8 untrained at each; 8/8 with two
# processes at seeds 0-4); seed 0 runs here.
def test_smoke_run_learns_the_pairs_and_the_reloaded_model_ranks_each_image_own_caption_first(tmp_path: Path) -> None:
    out = main(SMOKE, [f"output_dir={tmp_path / 'trained'}"])
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(saved) >= {"epoch", "name", "state_dict"}  # open_clip's training format, as released
    assert saved["state_dict"] and all(k.startswith("module.") for k in saved["state_dict"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    epochs = load_config(SMOKE, [])["train"]["epochs"]  # one batch of all eight pairs an epoch
    assert len(log) == epochs and log[-1]["loss"] < log[0]["loss"] and "mlm" in log[0]  # MLM is on in smoke.yaml

    loaded = load_pmcclip(out)  # strict: every key of the architecture, nothing else
    assert loaded.config.embed_dim == 32 and loaded.tokenizer.cls_token_id == loaded.config.cls_token_id
    pairs = read_pairs({"path": str(out / "data" / "pairs.jsonl")})
    assert len(pairs) == 8 and len({p.caption for p in pairs}) == 8
    trained = own_caption_ranks(out, pairs)

    # The same config and seed before any step: the initial weights, saved and reloaded the same way.
    untrained = own_caption_ranks(main(SMOKE, [f"output_dir={tmp_path / 'untrained'}", "train.epochs=0"]), pairs)
    print(f"own caption first: trained {trained.count(0)}/8 {trained}, untrained {untrained.count(0)}/8 {untrained}")
    assert trained.count(0) >= 7, trained
    assert untrained.count(0) <= 3, untrained


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_pair_without_a_caption_fails_naming_its_file_and_line(tmp_path: Path, suffix: str) -> None:
    data = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        data.write_text('{"image": "a.png", "caption": "a disc"}\n{"image": "b.png"}\n', encoding="utf-8")
    else:
        data.write_text("image,caption\na.png,a disc\nb.png,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        main(SMOKE, [f"output_dir={tmp_path / 'out'}", "data.synthetic=null", f"data.path={data}"])
    message = str(caught.value)
    assert message.startswith(f"{data}:2: ") if suffix == ".jsonl" else message.startswith(f"{data}:3: ")
    assert "caption" in message and "\n" not in message


def test_captions_are_masked_as_bert_does() -> None:
    special, ordinary = {0, 1, 2, 3, 4}, list(range(5, 50))
    ids = [2, *range(10, 30), 3, 0, 0]  # [CLS] twenty pieces [SEP] [PAD] [PAD]
    chosen = 0
    for seed in range(200):
        masked, labels = mask_tokens(ids, special, ordinary, 4, 0.15, torch.Generator().manual_seed(seed))
        targets = [i for i, label in enumerate(labels) if label != -100]
        assert targets and all(ids[i] not in special and labels[i] == ids[i] for i in targets)
        assert all(masked[i] == ids[i] for i in range(len(ids)) if i not in targets)
        chosen += len(targets)
    assert 0.1 < chosen / (200 * 20) < 0.2  # about 15 % of the word pieces
