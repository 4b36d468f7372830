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
