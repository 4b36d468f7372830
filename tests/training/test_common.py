"""training/common.py: one device key, refused old keys, the backend and device a process gets."""

from __future__ import annotations

import pytest
import torch

from medagent.tools.errors import ConfigError
from medagent.training.common import resolve_device, setup


def test_one_device_key_and_the_old_ones_are_refused_with_the_new_spelling(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup({"seed": 0, "device": "cpu"}).device == torch.device("cpu")
    run = setup({"seed": 0})  # auto
    assert run.device.type == ("cuda" if torch.cuda.is_available() else "cpu") and run.main and not run.distributed
    for old in ({"model": {"device": "cpu"}}, {"train": {"device": "cuda"}}):
        with pytest.raises(ConfigError, match="top-level `device:`"):
            setup(old)
    with pytest.raises(ConfigError, match="not auto, cpu, cuda or cuda:N"):
        resolve_device("tpu", 0, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU; the test checks the refusal a machine without one gives")
def test_asking_for_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:1", 0, False)


def _regression(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.randn(7, 5), torch.randn(7, 1)


def test_accumulated_micro_batches_step_as_the_whole_batch_does() -> None:
    from medagent.training.common import Run, Stepper

    run = Run(rank=0, world=1, device=torch.device("cpu"))
    # The reference: one SGD step on the mean loss over samples 0-5, then one on sample 6 (plain torch).
    reference, x, y = _regression()
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    for rows in (slice(0, 6), slice(6, 7)):
        torch.nn.functional.mse_loss(reference(x[rows]), y[rows]).backward()
        sgd.step()
        sgd.zero_grad()

    # The same two steps as micro-batches of 2, 2, 2 | 1 with accumulate 3 (the last step holds the remainder).
    model, _, _ = _regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = Stepper(model, optimizer, None, {"accumulate": 3, "grad_clip": 0}, run, total=4)
    stepped = []
    for index, rows in enumerate((slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 7))):
        with stepper.micro(index):
            stepper.backward(torch.nn.functional.mse_loss(model(x[rows]), y[rows]), index)
        stepped.append(stepper.step(index))
    assert stepped == [False, False, True, True] and stepper.steps == 2
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_precision_and_accumulation_values_are_checked() -> None:
    from medagent.training.common import Run, Stepper

    run = Run(rank=0, world=1, device=torch.device("cpu"))
    model, x, _ = _regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Stepper(model, optimizer, None, {"precision": "fp16"}, run, total=1)
    with pytest.raises(ConfigError, match="is not fp32, bf16 or fp16"):
        Stepper(model, optimizer, None, {"precision": "half"}, run, total=1)
    with pytest.raises(ConfigError, match="must be 1 or more"):
        Stepper(model, optimizer, None, {"accumulate": 0}, run, total=1)
    stepper = Stepper(model, optimizer, None, {"precision": "bf16"}, run, total=1)
    with stepper.micro(0):
        assert model(x).dtype == torch.bfloat16  # the forward autocasts; the parameters stay float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resume_restores_model_optimizer_schedule_and_draws(tmp_path) -> None:
    import random

    from medagent.training.common import Resume, Run, warmup_cosine

    run = Run(rank=0, world=1, device=torch.device("cpu"))
    cfg = {"train": {"checkpoint_every": 2}, "resume": True}

    def fresh() -> tuple:
        model, x, y = _regression()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        return model, optimizer, warmup_cosine(optimizer, 6, 2), random.Random(3), x, y

    def train_steps(model, optimizer, schedule, draw, x, y, steps, resume=None) -> list[float]:
        losses = []
        for step in steps:
            row = draw.randrange(7)
            loss = torch.nn.functional.mse_loss(model(x[row : row + 1]), y[row : row + 1])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if resume is not None:
                resume.save(step, model, optimizer, schedule=schedule, draw=draw)
        return losses

    whole = train_steps(*fresh(), range(6))
    model, optimizer, schedule, draw, x, y = fresh()
    first = train_steps(model, optimizer, schedule, draw, x, y, range(3), Resume(run, tmp_path, cfg))
    assert (tmp_path / "resume.pt").is_file()  # written after step 1 (the interval of 2); step 2 is lost
    model, optimizer, schedule, draw, x, y = fresh()
    resume = Resume(run, tmp_path, cfg)
    start = resume.load(model, optimizer, schedule=schedule, draw=draw)
    assert start == 2 and schedule.last_epoch == 2
    rest = train_steps(model, optimizer, schedule, draw, x, y, range(start, 6))
    assert first[:2] == whole[:2] and rest == pytest.approx(whole[2:], rel=1e-6)
    resume.done()
    assert not (tmp_path / "resume.pt").exists()
    assert Resume(run, tmp_path, cfg).load(model, optimizer) == 0  # nothing left: a new run
