"""`python -m medagent.evals.pmcclip` and the `vqa-rad-zero-shot` suite: the label rules on hand-written questions,
the scores and baselines on hand-made predictions, and an end-to-end run with a tiny random-weight PMC-CLIP on the
committed VQA-RAD sample (tests/data/radfm/vqa_rad)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medagent.evals.pmcclip import (
    build_items,
    choice_labels,
    format_report,
    main,
    organ_item,
    question_item,
    score,
    score_run,
    yes_no_labels,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "radfm" / "vqa_rad"

# Written for these tests (not VQA-RAD's own questions), each with the labels the rules should make.
YES_NO = [
    ("Is there a hiatal hernia?", ("presence", ["hiatal hernia", "no hiatal hernia"])),
    ("Are there signs of free air under the diaphragm?", ("presence", ["free air under the diaphragm",
                                                                       "no free air under the diaphragm"])),
    ("Does the patient have cardiomegaly?", ("presence", ["cardiomegaly", "no cardiomegaly"])),
    ("Is a pneumoperitoneum visible on this radiograph?", ("presence", ["pneumoperitoneum", "no pneumoperitoneum"])),
    ("Can you see the appendix?", ("presence", ["appendix", "no appendix"])),
    ("Any pleural thickening present?", ("presence", ["pleural thickening", "no pleural thickening"])),
    ("Are there 3 nodules in the right lung?", "presence: a count"),
    ("Is there a small round opacity projecting over the left lower lobe?", "presence: finding over 6 words"),
    ("Is this an MRI scan?", ("type", ["an MRI scan", "a CT scan or an X-ray radiograph"])),
    ("Is this image in the coronal plane?", ("type", ["a coronal slice", "an axial slice or a sagittal slice"])),
    ("Is this a study of the abdomen?", ("type", ["an image of the abdomen", "an image of the head or an image of the chest"])),
    ("Is this a plain radiograph?", "type: not a modality, plane or organ term"),
    ("Is the spleen enlarged?", ("attribute", ["enlarged spleen", "non-enlarged spleen"])),
    ("Does the aorta appear normal?", ("attribute", ["normal aorta", "abnormal aorta"])),
    ("Are the kidneys on this scan abnormal?", ("attribute", ["abnormal kidneys", "normal kidneys"])),
    ("Is the liver big?", "yes/no: no rule matched"),
    ("Was the scan done at night?", "yes/no: no rule matched"),
]
CHOICES = [
    ("Is the mass solid or cystic?", "Cystic", (["solid", "cystic"], 1)),
    ("Is the effusion on the patient's left or right side?", "left side", (["left side", "right side"], 0)),
    ("Was this CT taken with or without contrast?", "without contrast", (["with contrast", "without contrast"], 1)),
    ("Is the lesion benign appearing or malignant appearing?", "malignant appearing",
     (["benign appearing", "malignant appearing"], 1)),
    ("Is this T1, T2 or FLAIR?", "T2", "choice: more than two alternatives"),
    ("Is the stone in the kidney or the ureter?", "bladder", "choice: answer not an alternative"),
    ("Where is the mass?", "left kidney", "closed: not yes/no and no 'or' alternatives"),
]


@pytest.mark.parametrize(("question", "expected"), YES_NO)
def test_yes_no_rules_on_hand_written_questions(question: str, expected) -> None:
    assert yes_no_labels(question) == expected


@pytest.mark.parametrize(("question", "answer", "expected"), CHOICES)
def test_choice_rule_on_hand_written_questions(question: str, answer: str, expected) -> None:
    assert choice_labels(question, answer) == expected


def test_items_from_rows_and_the_organ_of_an_image() -> None:
    row = {"id": "q1", "question": "Is there a pneumothorax?", "answer": "No", "image": "/x/img1.jpg", "organ": "CHEST"}
    item = question_item(row)
    assert item["rule"] == "presence" and item["labels"] == ["pneumothorax", "no pneumothorax"] and item["answer"] == 1
    assert question_item({**row, "question": "Is the patient's prognosis good?"}) == "yes/no: no rule matched"
    organ = organ_item(row | {"organ": "ABD"})
    assert organ["id"] == "organ-img1" and organ["labels"][organ["answer"]] == "an image of the abdomen"
    assert len(organ["labels"]) == 3 and organ_item(row | {"organ": "SPINE"}) is None


def test_accuracy_chance_and_majority_on_known_predictions() -> None:
    def item(id_, rule, labels, answer, keys):
        return {"id": id_, "rule": rule, "labels": labels, "answer": answer, "keys": keys}

    yes_no = ["yes", "no"]
    items = [
        item("a", "presence", ["x", "no x"], 0, yes_no),  # yes
        item("b", "presence", ["y", "no y"], 1, yes_no),  # no
        item("c", "organ (meta)", ["h", "c", "a"], 2, ["head", "chest", "abdomen"]),  # abdomen
    ]
    train = [item("t1", "presence", ["p", "no p"], 1, yes_no), item("t2", "presence", ["q", "no q"], 1, yes_no),
             item("t3", "presence", ["r", "no r"], 0, yes_no), item("t4", "organ (meta)", ["h", "c", "a"], 1,
                                                                  ["head", "chest", "abdomen"])]  # fmt: skip
    result = score(items, {"a": 0, "b": 0, "c": 2}, train)
    # Right on a and c; chance (1/2 + 1/2 + 1/3) / 3; majority: "no" for presence (right on b), chest (wrong on c).
    assert result["accuracy"] == round(2 / 3, 4)
    assert result["chance"] == round((0.5 + 0.5 + 1 / 3) / 3, 4)
    assert result["majority"] == round(1 / 3, 4)
    assert result["majority_answers"] == {"presence": "no", "organ (meta)": "chest"}
    assert result["by_rule"]["presence"] == {"n": 2, "accuracy": 0.5, "chance": 0.5, "majority": 0.5}


def test_sample_items_and_counts() -> None:
    built = build_items(SAMPLE, fold="val")
    assert built["made"] == {"presence": 2, "organ (meta)": 1} and built["skipped"] == {} and built["closed"] == 2
    train = build_items(SAMPLE, fold="train")
    # 6 closed train questions: ischemic (attribute), atrophy and the two midline shifts (presence), "an image of the
    # brain" (type), "hyper intense" (no rule); two train images.
    assert train["closed"] == 6 and train["skipped"] == {"yes/no: no rule matched": 1}
    assert train["made"] == {"type": 1, "presence": 3, "attribute": 1, "organ (meta)": 2}


@pytest.fixture(scope="module")
def tiny_pmcclip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight PMC-CLIP folder in the released layout (checkpoint.pt, tokenizer, pmcclip_config.json)."""
    import torch
    from transformers import AutoTokenizer

    from medagent.specialists.pmcclip.model import PMCCLIP, BertShape, PMCCLIPConfig
    from medagent.training.pathology.recipe import build_tokenizer

    folder = tmp_path_factory.mktemp("pmcclip_zero_shot")
    rows = [json.loads(line) for line in (SAMPLE / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    build_tokenizer([f"{r['question']} {r['answer']}" for r in rows] + ["no an image of the head chest abdomen"],
                    folder, vocab_size=300)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    bert = BertShape(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=80)  # fmt: skip
    config = PMCCLIPConfig(embed_dim=32, image_size=64, vision_layers=(1, 1, 1, 1), vision_width=32, bert=bert,
                           fusion_layers=1, fusion_heads=2, cls_token_id=tokenizer.cls_token_id)  # fmt: skip
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in PMCCLIP(config).state_dict().items()}
    torch.save({"epoch": 1, "name": "tiny", "state_dict": state}, folder / "checkpoint.pt")
    (folder / "pmcclip_config.json").write_text(json.dumps(config.to_dict()))
    return folder


def test_command_prints_accuracy_beside_the_baselines(tiny_pmcclip: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "medagent.toml"
    config.write_text(f'[pmcclip]\npath = "{tiny_pmcclip}"\ndevice = "cpu"\n')
    out = tmp_path / "report.json"
    assert main(["--config", str(config), "--data-dir", str(SAMPLE), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    print(text)
    assert f"with PMC-CLIP (weights {tiny_pmcclip / 'checkpoint.pt'}): 3 items from 2 closed questions" in text
    assert "made:    presence 2, organ (meta) 1" in text and "skipped: 0 closed questions" in text
    assert "chance 0.444" in text and "majority" in text  # (1/2 + 1/2 + 1/3) / 3
    report = json.loads(out.read_text())
    assert {p["predicted"] for p in report["predictions"].values()} <= {0, 1, 2}

    # The same items through imaging.classify in the eval runner give the same predictions.
    from medagent.evals.runner import run_suite
    from medagent.tools.config import load_settings

    config.write_text(config.read_text() + "\n[knowledge]\nenabled = false\n")
    run = tmp_path / "run"
    run_suite("vqa-rad-zero-shot", out=run, data_dir=SAMPLE, settings=load_settings(config), quiet=True)
    scored = score_run(run, SAMPLE)
    assert {k: v["predicted"] for k, v in scored["predictions"].items()} == {
        k: v["predicted"] for k, v in report["predictions"].items()
    }
    assert "accuracy" in format_report(scored) and str(run) in format_report(scored)


def test_missing_weights_give_one_line_and_exit_code_2(tmp_path: Path, capsys) -> None:
    config = tmp_path / "medagent.toml"
    config.write_text("")
    assert main(["--config", str(config), "--data-dir", str(SAMPLE)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no PMC-CLIP checkpoint configured" in err[0], err
    config.write_text(f'[pmcclip]\npath = "{tmp_path / "nowhere"}"\n')
    assert main(["--config", str(config), "--data-dir", str(SAMPLE)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0], err
