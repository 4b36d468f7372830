"""The KEP recipe's step bookkeeping: where a resumed stage starts, which checkpoint it resumes, old configs' `amp`.

(tests/training/test_resume.py kills a real run in stage 2 and checks the resumed loss curve.)"""

from __future__ import annotations

from pathlib import Path

import torch

from medagent.training.common import Resume, Run, save_atomic
from medagent.training.pathology.recipe import micro_batches, shared_settings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_a_stage_resumed_at_micro_batch_k_runs_exactly_the_rest_of_the_whole_stage() -> None:
    for rank in (0, 1):
        run = Run(rank=rank, world=2, device=CPU)
        # 21 pairs in batches of 4 over 2 ranks: 11 each (padded), 3 batches an epoch, 5 epochs
        whole = list(micro_batches(21, 4, run, seed=2, epochs=5, start=0))
        assert len(whole) == 15 and all(len(batch) <= 4 for batch in whole)
        assert whole[:3] != whole[3:6]  # each epoch has its own order
        for start in (1, 3, 7, 14, 15):
            assert list(micro_batches(21, 4, run, seed=2, epochs=5, start=start)) == whole[start:]


def test_the_checkpoint_step_is_read_only_when_resuming(tmp_path: Path) -> None:
    run = Run(rank=0, world=1, device=CPU)
    assert Resume(run, tmp_path, {"resume": True}).saved_step() == -1  # nothing written yet
    save_atomic({"step": 14, "model": {"w": torch.zeros(3)}}, tmp_path / "resume.pt")
    assert Resume(run, tmp_path, {"resume": True}).saved_step() == 14
    assert Resume(run, tmp_path, {"resume": False}).saved_step() == -1  # a new run ignores it


def test_an_old_config_with_amp_true_still_gets_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert shared_settings({"amp": True}, CUDA)["precision"] == "bf16"
    assert shared_settings({"amp": True}, CPU)["precision"] == "fp32"
    assert shared_settings({"amp": True, "train": {"precision": "fp16"}}, CUDA)["precision"] == "fp16"
    assert "precision" not in shared_settings({"train": {"checkpoint_every": 5}}, CPU)  # Stepper's default: fp32
