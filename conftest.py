"""Repository-root pytest configuration: report the machine, expose the example folder."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# One cache root for the whole test run (built graphs, indexes, assembled models are made once),
# inside the checkout so tests never touch the user's own cache. Chat sessions get unique ids.
os.environ.setdefault("MEDAGENT_HOME", str(Path(__file__).resolve().parent / ".medagent-home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_report_header(config):
    return f"medagent tests on {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped with the reason printed when no CUDA device is present."""
    import pytest

    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
        for item in gpu_items:
            item.add_marker(skip)


import pytest  # noqa: E402 - after the environment is set


@pytest.fixture(scope="module")
def oracle(request) -> tuple[dict, dict]:
    """The inputs and outputs of the authors' own code in the test module's `ORACLE` folder
    (tests/data/oracles/<model>, see each README): the reference the parity tests reproduce."""
    import torch

    folder = request.module.ORACLE
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    outputs = torch.load(folder / "outputs.pt", weights_only=True)["outputs"]
    return inputs, outputs
