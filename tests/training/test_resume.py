"""Kill a training run, resume it, and get the loss curve of a run that was never interrupted.

Each recipe writes `resume.pt` every `train.checkpoint_every` optimizer steps (training/common.py's Resume) and
logs its losses to `train_log.jsonl`; the run is started as a user starts it (`python -m medagent.cli train`),
killed with SIGKILL once a checkpoint is on disk, and resumed with `resume=true`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medagent.training.medvint.recipe import main as medvint_main
from medagent.training.pathology.recipe import main as pathology_main
from medagent.training.planner.recipe import main as planner_main
from medagent.training.pmcclip.recipe import main as pmcclip_main
from medagent.training.raddiag.recipe import main as raddiag_main
from medagent.training.radfm.recipe import main as radfm_main
from medagent.training.sat.recipe import main as sat_main
from medagent.training.segmentation.recipe import main as segmentation_main
from medagent.training.speech.recipe import main as speech_main

REPO = Path(__file__).resolve().parents[2]
# recipe -> (entry point, overrides, the checkpoint to kill after, the steps the curve has, what the run leaves)
RECIPES = {
    "speech": (speech_main, ["train.steps=40", "train.log_every=1", "train.checkpoint_every=10"], 19, 40, "whisper.pt"),
    # 120 micro-batches in optimizer steps of 2 (accumulation), a checkpoint every 10 steps: killed after step 29
    # (micro-batch 59), resumed at micro-batch 60.
    "radfm": (radfm_main, ["train.accumulate=2", "train.checkpoint_every=10"], 29, 120, "model"),
    # Two stages, one step counter: 10 stage-1 steps (0-9), then 30 one-batch epochs in optimizer steps of 2 (10-24);
    # the towers stay frozen for 12 epochs (steps 10-15), so the kill after step 14 lands in stage 2 with frozen
    # towers: the resumed run skips stage 1 and takes its BERT (tower and frozen copy) from the checkpoint.
    "pathology": (
        pathology_main,
        ["stage1.epochs=10", "stage2.epochs=30", "stage2.accumulate=2", "stage2.freeze_epochs=12",
         "train.checkpoint_every=3"],
        14, 25, "pytorch_model.bin",
    ),  # fmt: skip
    # 40 epochs of 2 micro-batches, optimizer steps of 2: killed after step 19 (epoch 19), resumed at epoch 20.
    "raddiag": (
        raddiag_main,
        ["train.accumulate=2", "train.checkpoint_every=5"], 19, 40, "pytorch_model.bin",
    ),  # fmt: skip
    # 20 optimizer steps of 2 micro-batches drawn by the rank's generator (its state is in the checkpoint).
    "planner": (
        planner_main,
        [f"data.examples={REPO / 'tests' / 'data' / 'planner' / 'examples.jsonl'}", "model.vocab_size=400",
         "train.steps=20", "train.accumulate=2", "train.checkpoint_every=5"],
        9, 20, "adapter",
    ),  # fmt: skip
    # 40 epochs of one batch, optimizer steps of 2: killed after step 9; the LoRA + vision side come back.
    "medvint": (medvint_main, ["train.accumulate=2", "train.checkpoint_every=10", "train.epochs=40"], 9, 40, "model"),
    # 60 epochs of one batch per process, optimizer steps of 2: killed after step 19, resumed at micro-batch 40.
    "pmcclip": (pmcclip_main, ["train.accumulate=2", "train.checkpoint_every=10", "train.epochs=60"], 19, 60,
                "checkpoint.pt"),  # fmt: skip
    # 4 volumes in batches of 2 (2 micro-batches an epoch), optimizer steps of 2: killed after step 5; the best
    # validation Dice so far and its weights come back from the checkpoint.
    # 10 optimizer steps of 2 micro-batches (16 volumes, 8 batches an epoch): killed after step 5 (micro-batch 11);
    # the crops come from (seed, epoch, index) and the decoder's dropout from the restored random state.
    "sat": (sat_main, ["train.steps=10", "train.accumulate=2", "train.checkpoint_every=3"], 5, 20, "model"),
    "segmentation": (
        segmentation_main,
        ["train.steps=10", "train.accumulate=2", "train.val_every=5", "train.checkpoint_every=2"],
        5, 10, "bundle",
    ),  # fmt: skip
}


def curve(folder: Path) -> dict[int, float]:
    """step -> loss from train_log.jsonl (steps logged twice, before a kill and after the resume: the last)."""
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_killed_run_resumes_from_its_checkpoint_with_the_same_loss_curve(name: str, tmp_path: Path) -> None:
    main, run, kill_after, length, product = RECIPES[name]
    smoke = REPO / "training" / name / "configs" / "smoke.yaml"
    main(smoke, [f"output_dir={tmp_path / 'whole'}", *run])
    reference = curve(tmp_path / "whole")
    assert sorted(reference) == list(range(length))

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "medagent.cli", "train", name, "--config", str(smoke), f"output_dir={killed}", *run]
    env = {**os.environ, "OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", "1"))}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if f"checkpoint after step {kill_after}:" in line:
                process.kill()
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert any(f"checkpoint after step {kill_after}:" in line for line in seen), "".join(seen[-40:])
    assert (killed / "resume.pt").is_file() and not (killed / product).exists()
    assert max(curve(killed)) < length - 1  # it really stopped early

    main(smoke, [f"output_dir={killed}", *run, "resume=true"])
    resumed = curve(killed)
    assert sorted(resumed) == list(range(length))
    assert all(abs(resumed[step] - reference[step]) <= 1e-3 + 1e-3 * reference[step] for step in reference), (
        [(step, reference[step], resumed[step]) for step in reference if resumed[step] != reference[step]]
    )
    assert (killed / product).exists() and not (killed / "resume.pt").exists()  # finished: nothing to resume
