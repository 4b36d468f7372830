"""Kill a training run, resume it, and get the loss curve of a run that was never interrupted (speech recipe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from medagent.training.speech.recipe import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "training" / "speech" / "configs" / "smoke.yaml"
RUN = ["train.steps=40", "train.log_every=1", "train.checkpoint_every=10"]


def curve(folder: Path) -> dict[int, float]:
    """step -> loss from train_log.jsonl (steps logged twice, before a kill and after the resume: the last)."""
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def test_a_killed_run_resumes_from_its_checkpoint_with_the_same_loss_curve(tmp_path: Path) -> None:
    reference = curve(main(SMOKE, [f"output_dir={tmp_path / 'whole'}", *RUN]))

    # The same run as a user starts it, killed (SIGKILL) once its step-20 checkpoint is on disk.
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "medagent.cli", "train", "speech", "--config", str(SMOKE),
               f"output_dir={killed}", *RUN]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", "1"))}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "checkpoint after step 19" in line:
                process.kill()
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert any("checkpoint after step 19" in line for line in seen), "".join(seen[-40:])
    assert (killed / "resume.pt").is_file() and not (killed / "whisper.pt").exists()
    assert max(curve(killed)) < 39  # it really stopped early

    out = main(SMOKE, [f"output_dir={killed}", *RUN, "resume=true"])
    resumed = curve(out)
    assert sorted(resumed) == list(range(40))
    assert all(abs(resumed[step] - reference[step]) <= 1e-3 + 1e-3 * reference[step] for step in reference), (
        [(step, reference[step], resumed[step]) for step in reference if resumed[step] != reference[step]]
    )
    assert (out / "whisper.pt").is_file() and not (out / "resume.pt").exists()  # finished: nothing left to resume
