"""Round trip: the smoke recipe fine-tunes a tiny MedVInT-TD on eight synthetic picture-question pairs, the specialist's
strict loader reads the checkpoint (LoRA unmerged, released PEFT naming), and answer_choices picks the right letter.
Also: PMC-VQA's CSV layout, the authors' prompt and label masking, and a bad row named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.medvint.load import load_medvint
from medagent.tools.errors import ConfigError
from medagent.training.medvint.recipe import ANSWER_END, main, read_rows, right_choices, sequence, texts

SMOKE = Path(__file__).resolve().parents[2] / "training" / "medvint" / "configs" / "smoke.yaml"


# Seeds 0-5 were checked by hand when smoke.yaml was set (8/8 trained, 2/8 untrained at each); seed 0 runs here.
def test_smoke_run_learns_the_questions_and_the_reloaded_model_answers_them(tmp_path: Path) -> None:
    out = main(SMOKE, [f"output_dir={tmp_path}"])
    assert out == tmp_path / "model"
    saved = torch.load(out / "pytorch_model.bin", weights_only=True)
    lora = [k for k in saved if ".lora_" in k]
    assert lora and all(k.startswith("llamacasual.base_model.model.") for k in lora)  # PEFT-wrapped, not merged
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora)  # the released naming
    assert {"query_embed.weight", "fc_l1.weight", "fc_l2.weight"} <= set(saved)
    base = torch.load(tmp_path / "base" / "pytorch_model.bin", weights_only=True)
    assert set(base) == set(saved)
    for trained_key in (lora[0], "fc_l2.weight", "query_embed.weight"):
        assert not torch.equal(base[trained_key], saved[trained_key]), trained_key
    assert torch.equal(base["vision_model.0.weight"], saved["vision_model.0.weight"])  # smoke: the trunk stays frozen
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 60 and log[-1]["loss"] < log[0]["loss"]  # one batch of eight an epoch

    assert load_medvint(out, dtype="fp32").base == "checkpoint"  # strict: every key, nothing else
    rows = read_rows({"path": str(tmp_path / "data" / "pairs.jsonl")})
    assert len({r.question for r in rows}) == 8 and sorted(r.letter for r in rows) == list("AABBCCDD")
    trained = right_choices(out, rows)
    untrained = right_choices(tmp_path / "base", rows)  # build_tiny's weights at the same seed, before any step
    print(f"right letters: trained {sum(trained)}/8 {trained}, untrained {sum(untrained)}/8 {untrained}")
    assert sum(trained) >= 7, trained
    assert sum(untrained) <= 3, untrained


def test_pmc_vqa_rows_get_the_authors_prompt_target_and_labels(tmp_path: Path) -> None:
    from medagent.specialists.radfm.tiny import word_tokenizer

    data = tmp_path / "train.csv"
    data.write_text(
        "Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label\n"
        "PMC1064097_F1.jpg,What is the uptake pattern in the breast?,Focal uptake pattern, A:Diffuse uptake pattern,"
        " B:Focal uptake pattern, C:No uptake pattern, D:Cannot determine from the information given,B\n",
        encoding="utf-8",
    )
    (row,) = read_rows({"path": str(data), "image_root": str(tmp_path / "images")})
    assert row.image == tmp_path / "images" / "PMC1064097_F1.jpg" and row.letter == "B"
    assert row.choices[0] == "Diffuse uptake pattern" and row.where == f"{data}:2"
    prompt, target = texts(row, "choice")
    assert prompt == ("Question: What is the uptake pattern in the breast?Choices: A:Diffuse uptake pattern B:Focal uptake "
                      "pattern C:No uptake pattern D:Cannot determine from the information givenThe Answer is:")  # fmt: skip
    assert target == " B:Focal uptake pattern"
    blank = texts(row, "blank")
    assert blank == ("Question: What is the uptake pattern in the breast?The Answer is:", " Focal uptake pattern")
    tokenizer = word_tokenizer([prompt + target])
    ids, labels = sequence(tokenizer, prompt, target, 512)
    answer = tokenizer(target, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and ids[-1] == ANSWER_END and labels[-len(answer) - 1 :] == [*answer, ANSWER_END]
    assert labels[: -len(answer) - 1] == [-100] * (len(ids) - len(answer) - 1)  # bos + prompt carry no loss


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_row_without_an_answer_fails_naming_its_file_and_line(tmp_path: Path, suffix: str) -> None:
    data = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":
        good = {"image": "a.png", "question": "Is there a mass?", "answer": "no", "choices": ["yes", "no"]}
        data.write_text(json.dumps(good) + '\n{"image": "b.png", "question": "Which side?"}\n', encoding="utf-8")
    else:
        data.write_text(
            "Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label\n"
            "a.png,Which organ?,Liver,A:Liver,B:Spleen,C:Kidney,D:Heart,A\n"
            "b.png,Which side?,,A:Left,B:Right,,,\n",
            encoding="utf-8",
        )
    with pytest.raises(ConfigError) as caught:
        main(SMOKE, [f"output_dir={tmp_path / 'out'}", "data.synthetic=null", f"data.path={data}"])
    message = str(caught.value)
    line = 2 if suffix == ".jsonl" else 3
    assert message.startswith(f"{data}:{line}: ") and "answer" in message and "\n" not in message
