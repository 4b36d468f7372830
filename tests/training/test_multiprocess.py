"""Recipes under torchrun: two CPU processes (gloo, DDP), launched as the configs document it.

Each run is `python -m torch.distributed.run --standalone --nproc_per_node 2 -m medagent.cli train NAME --config
training/NAME/configs/smoke.yaml`. Both ranks must report the same number of steps (each rank prints
`[rank R/2] NAME: N steps, final loss L`, training/common.py), and the checkpoint rank 0 wrote must load
through the specialist and predict what the single-process round trip predicts (tests/pathology, tests/speech,
tests/radfm, tests/imaging assert the same predictions for one process). FSDP needs CUDA: the planner and RadFM
smoke configs choose `strategy: ddp`. About 2 minutes on 2 cores in all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from medagent.training.common import Run, rank_batches, rank_share

REPO = Path(__file__).resolve().parents[2]
FINISHED = re.compile(r"\[rank (\d+)/(\d+)\] (\w[\w ]*): (\d+) steps, final loss ([\d.]+)")


def torchrun(name: str, overrides: list[str], timeout: int = 240) -> tuple[str, dict[int, tuple[int, float]]]:
    """Run recipe `name`'s smoke config on two CPU processes; (log, {rank: (steps, final loss)})."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medagent.cli", "train", name, "--config", f"training/{name}/configs/smoke.yaml", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a small machine: one thread each
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    finished = {int(m[1]): (int(m[4]), float(m[5])) for m in FINISHED.finditer(log) if m[3] == name and m[2] == "2"}
    assert set(finished) == {0, 1}, f"both ranks must report their steps:\n{log[-3000:]}"
    print(f"{name} two processes: {finished}")
    return log, finished


def test_batches_are_padded_so_every_rank_runs_as_many_steps() -> None:
    ranks = [Run(rank=r, world=2, device=torch.device("cpu")) for r in range(2)]
    # 21 samples in batches of 4 over 2 ranks: 11 each (one repeated), 3 batches each.
    shares = [rank_batches(21, 4, run, seed=0, epoch=0) for run in ranks]
    assert [len(s) for s in shares] == [3, 3]
    assert sorted({i for s in shares for b in s for i in b}) == list(range(21))
    assert rank_batches(21, 4, ranks[0], seed=0, epoch=1) != shares[0]  # a new order each epoch
    # RadFM's batch list: 3 batches over 2 ranks used to give 2 and 1 steps (and hang); now 2 and 2.
    assert [len(rank_share(["a", "b", "c"], run)) for run in ranks] == [2, 2]
    one = Run(rank=0, world=1, device=torch.device("cpu"))
    assert sorted(i for b in rank_batches(21, 4, one, seed=0, epoch=0) for i in b) == list(range(21))


def test_pathology_two_processes_match_the_single_process_round_trip(tmp_path: Path) -> None:
    from medagent.specialists.pathology.infer import KEPClassifier
    from medagent.specialists.pathology.labels import Label, LabelSet
    from medagent.specialists.pathology.load import load_kep
    from medagent.training.pathology.recipe import SYNTHETIC_CLASSES, load_config, main, synthetic_data

    smoke = REPO / "training" / "pathology" / "configs" / "smoke.yaml"
    single = main(smoke, [f"output_dir={tmp_path / 'one'}"])
    _, finished = torchrun("pathology", [f"output_dir={tmp_path / 'two'}"])
    cfg = load_config(smoke, [])
    # 60 stage-1 + 200 stage-2 epochs, one batch each on either rank (and in one process).
    assert finished[0][0] == finished[1][0] == cfg["stage1"]["epochs"] + cfg["stage2"]["epochs"]

    labels = LabelSet("synthetic", tuple(Label(name, synonyms) for name, (synonyms, _) in SYNTHETIC_CLASSES.items()))
    pairs, _ = synthetic_data(cfg["data"]["synthetic"]["per_class"], cfg["data"]["synthetic"]["image_size"], 0)
    predictions = {}
    for run, folder in (("one", single), ("two", tmp_path / "two")):
        classifier = KEPClassifier(load_kep(folder))
        predictions[run] = [classifier.classify(image, labels).ranked()[0][0] for image, _, _ in pairs]
    assert predictions["two"] == predictions["one"] == [label for _, _, label in pairs]


def test_speech_two_processes_learn_the_phrases(tmp_path: Path) -> None:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    from medagent.specialists.speech.audio import read_audio
    from medagent.training.speech.recipe import greedy_hf

    # checkpoint_every: the resume checkpoint gathers both ranks' draw states (test_resume.py resumes one).
    log, finished = torchrun("speech", [f"output_dir={tmp_path}", "train.checkpoint_every=50"])
    assert finished[0][0] == finished[1][0] == 100  # train.steps, as in one process
    assert "checkpoint after step 49" in log and not (tmp_path / "resume.pt").exists()  # removed once finished
    assert (tmp_path / "whisper.pt").is_file() and (tmp_path / "ct2" / "model.bin").is_file()
    constants = json.loads((tmp_path / "export.json").read_text())["constants"]
    hf = WhisperForConditionalGeneration.from_pretrained(str(tmp_path / "hf"))
    tokenizer = WhisperTokenizerFast.from_pretrained(str(tmp_path / "hf"))
    extractor = WhisperFeatureExtractor.from_pretrained(str(tmp_path / "hf"))
    audio_dir = REPO / "examples" / "audio"
    spoken = json.loads((audio_dir / "transcripts.json").read_text())
    for name in ("phrase_chest_pain.flac", "phrase_no_fever.flac", "phrase_cough.flac"):
        audio = read_audio(audio_dir / name)
        features = torch.from_numpy(extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[0])
        assert tokenizer.decode(greedy_hf(hf, features, constants)).strip() == spoken[name]


def test_radfm_two_processes_answer_the_training_questions(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from medagent.specialists.radfm.infer import answer
    from medagent.specialists.radfm.load import load_radfm
    from medagent.specialists.radfm.preprocess import image_to_tensor

    _, finished = torchrun("radfm", [f"output_dir={tmp_path}"])
    # Four 2D pairs in batches of 2: two batches an epoch, one per rank (60 epochs; one process runs 120 steps).
    assert finished[0][0] == finished[1][0] == 60
    bundle = load_radfm(tmp_path / "model", dtype="fp32")
    data = REPO / "tests" / "data" / "radfm" / "vqa_rad"
    rows = [json.loads(line) for line in (data / "dev.jsonl").read_text().splitlines()]
    for row in [row for row in rows if row["fold"] == "train"][:4]:
        with Image.open(data / "images" / Path(row["image"]).name) as image:
            pixels = np.asarray(image.convert("L"))
        scan = image_to_tensor(pixels, bundle.config.vision.image_size)
        assert answer(bundle, row["question"], [scan], max_new_tokens=6) == row["answer"].lower()


def test_segmentation_two_processes_segment_the_volumes(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from medagent.specialists.imaging.bundle import build_network, load_bundle, segment
    from medagent.specialists.imaging.ctquant import dice

    # 30 steps as in tests/imaging/test_segmentation_recipe.py; the 4 volumes give each rank one batch of 2.
    _, finished = torchrun("segmentation", [f"output_dir={tmp_path}", "train.steps=30", "train.val_every=30"])
    assert finished[0][0] == finished[1][0] == 30
    bundle = load_bundle(tmp_path / "bundle" / "synthetic_spheres")
    network = build_network(bundle)
    scores = []
    for index in range(4):  # rank 0 wrote these volumes; rank 1 read the same files
        result = segment(bundle, tmp_path / "data" / f"image_{index}.nii.gz", network)
        reference = np.asarray(nib.load(str(tmp_path / "data" / f"label_{index}.nii.gz")).dataobj) == 1
        scores.append(dice(result.labels == 1, reference))
    assert min(scores) >= 0.8, scores


def test_planner_two_processes_save_an_adapter_that_learned(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medagent.agent.llm.base import render_alpaca

    # Four planning examples in agent/sft.py's format, committed (the one-process round trip, with traces from
    # real runs, is tests/llm/test_planner_recipe.py: 3.5 min; 12 steps here).
    path = REPO / "tests" / "data" / "planner" / "examples.jsonl"
    examples = [json.loads(line) for line in path.read_text().splitlines()]
    overrides = [f"data.examples={path}", f"output_dir={tmp_path / 'run'}", "train.steps=12", "model.vocab_size=400"]
    _, finished = torchrun("planner", overrides)
    assert finished[0][0] == finished[1][0] == 12

    # The adapter rank 0 saved loads onto the base beside it (as `[llm] adapter_path` does) and fits the
    # examples better than the base alone.
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "base"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "base"))

    def loss(model: torch.nn.Module) -> float:
        total = 0.0
        for example in examples:
            prompt = tokenizer(render_alpaca(example["messages"][:2]))["input_ids"]
            reply = tokenizer(example["messages"][2]["content"], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + reply + [tokenizer.eos_token_id]])
            labels = torch.tensor([[-100] * len(prompt) + reply + [tokenizer.eos_token_id]])
            with torch.no_grad():
                total += float(model(input_ids=ids, labels=labels).loss)
        return total / len(examples)

    before = loss(base)
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
    assert loss(tuned) < before / 2


def test_raddiag_two_processes_rank_each_volumes_own_disorder_first(tmp_path: Path) -> None:
    from medagent.specialists.raddiag.infer import diagnose
    from medagent.specialists.raddiag.load import load_raddiag
    from medagent.specialists.raddiag.preprocess import prepare_case
    from medagent.training.config import load_config
    from medagent.training.raddiag.recipe import read_scan

    _, finished = torchrun("raddiag", [f"output_dir={tmp_path}"])
    # 8 synthetic cases over 2 ranks in batches of 4: one batch an epoch on each rank (one process: two).
    epochs = load_config(REPO / "training" / "raddiag" / "configs" / "smoke.yaml", [])["train"]["epochs"]
    assert finished[0][0] == finished[1][0] == epochs
    trained = load_raddiag(tmp_path)
    folder = tmp_path / "synthetic"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    hits = 0
    for row in rows:  # as tests/raddiag/test_recipe.py asserts for the one-process run
        (top,) = diagnose(trained, prepare_case([read_scan(folder / row["scans"][0]["path"], "CT")], trained.config), top=1)
        hits += top.disorder == row["labels"][0]
    assert hits >= 7, f"{hits} of {len(rows)} volumes ranked their own disorder first"


def test_pmcclip_two_processes_rank_each_picture_own_caption_first(tmp_path: Path) -> None:
    from medagent.training.config import load_config
    from medagent.training.pmcclip.recipe import own_caption_ranks, read_pairs

    # checkpoint_every: the resume checkpoint gathers both ranks' random states; the contrastive loss gathers
    # both ranks' features (open_clip's gather_with_grad + local_loss), so each picture has all 8 captions as negatives.
    log, finished = torchrun("pmcclip", [f"output_dir={tmp_path}", "train.checkpoint_every=50"])
    epochs = load_config(REPO / "training" / "pmcclip" / "configs" / "smoke.yaml", [])["train"]["epochs"]
    assert finished[0][0] == finished[1][0] == epochs  # 8 pairs: one batch of 4 per rank an epoch, as one process
    assert "checkpoint after step 49" in log and not (tmp_path / "resume.pt").exists()  # removed once finished
    ranks = own_caption_ranks(tmp_path, read_pairs({"path": str(tmp_path / "data" / "pairs.jsonl")}))
    assert ranks.count(0) >= 7, ranks  # the one-process round trip (tests/pmcclip/test_recipe.py) asks the same


def test_the_knowledge_recipe_refuses_torchrun_in_one_line(tmp_path: Path) -> None:
    # MiniLM trains in one process; under torchrun each rank would write the same folder. Refused before any work.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medagent.cli", "train", "knowledge", "--config", "training/knowledge/configs/smoke.yaml",
        f"output_dir={tmp_path}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode != 0
    assert "the knowledge recipe runs in one process" in done.stderr + done.stdout
    assert not any(tmp_path.iterdir())  # nothing written


def test_medvint_two_processes_answer_the_synthetic_questions(tmp_path: Path) -> None:
    from medagent.training.config import load_config
    from medagent.training.medvint.recipe import read_rows, right_choices

    _, finished = torchrun("medvint", [f"output_dir={tmp_path}"])
    # Eight synthetic rows, batch_size 8 per process: four rows and one batch an epoch on each rank (one process:
    # the eight in one batch), so both ranks run train.epochs optimizer steps, as one process does.
    epochs = load_config(REPO / "training" / "medvint" / "configs" / "smoke.yaml", [])["train"]["epochs"]
    assert finished[0][0] == finished[1][0] == epochs
    rows = read_rows({"path": str(tmp_path / "data" / "pairs.jsonl")})  # rank 0 drew them, rank 1 read the same files
    right = right_choices(tmp_path / "model", rows)  # as tests/medvint/test_recipe.py asks the one-process checkpoint
    assert sum(right) >= 7, right


def test_sat_two_processes_segment_each_organ_by_name(tmp_path: Path) -> None:
    import importlib.util

    from medagent.training.config import load_config

    _, finished = torchrun("sat", [f"output_dir={tmp_path}"])
    # 16 synthetic volumes in batches of 2 per process: four batches an epoch on each rank (one process: eight),
    # so both ranks run train.steps optimizer steps, as one process does.
    steps = load_config(REPO / "training" / "sat" / "configs" / "smoke.yaml", [])["train"]["steps"]
    assert finished[0][0] == finished[1][0] == steps
    # The one-process round trip's own volumes and scoring (tests/sat/test_recipe.py), on rank 0's checkpoint.
    spec = importlib.util.spec_from_file_location("sat_round_trip", REPO / "tests" / "sat" / "test_recipe.py")
    round_trip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(round_trip)
    dice = round_trip.scores(tmp_path / "model", [round_trip.abdomen(seed) for seed in (11, 12, 13)])
    for prompt, other in (("liver", "spleen"), ("spleen", "liver")):
        assert dice[prompt][prompt] >= 0.5 and dice[prompt][other] <= 0.2, dice
